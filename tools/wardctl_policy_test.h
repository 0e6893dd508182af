/* wardctl_policy_test.h — `wardctl policy test`: decide one request or connection against
 * AuthorizationPolicy files exactly as a ward-proxy would, and say which policy and rule decided
 * (see wardctl_policy_test.c). */
#ifndef WARDCTL_POLICY_TEST_H
#define WARDCTL_POLICY_TEST_H

#include <stdio.h>

/* Runs the command on argv[0] = "test" and the arguments after it. Returns the exit status: 0 the
 * request is allowed, 1 it is denied, 2 a usage error, policies that do not load, or a request
 * path the proxy would refuse with a 400. */
int wardctl_policy_test(int argc, char **argv);

/* Prints the command's help text. */
void wardctl_policy_test_usage(FILE *out);

#endif
