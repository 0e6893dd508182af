/* wardctl_diagnose.h — `wardctl diagnose TARGET ...`: connect to an mTLS server the way an
 * outbound sidecar does and say, in plain words, why a connection to it works or fails (see
 * wardctl_diagnose.c). */
#ifndef WARDCTL_DIAGNOSE_H
#define WARDCTL_DIAGNOSE_H

#include <stdio.h>

/* Runs the command on its arguments (those after "diagnose"). Returns the exit status: 0 the
 * connection works, 1 a diagnosed failure (the verdict says which), 2 a usage error. */
int wardctl_diagnose(int argc, char **argv);

/* Prints the command's help text. */
void wardctl_diagnose_usage(FILE *out);

#endif
