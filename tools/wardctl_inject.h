/* wardctl_inject.h — `wardctl inject -f FILE|-`: add the ward sidecar to every pod template of a
 * stream of Kubernetes manifests (see wardctl_inject.c). */
#ifndef WARDCTL_INJECT_H
#define WARDCTL_INJECT_H

#include <stdio.h>

/* Runs the command on its arguments (those after "inject"). Returns the exit status: 0 written,
 * 1 bad input (each bad document is named on stderr, nothing is written), 2 a usage error. */
int wardctl_inject(int argc, char **argv);

/* Prints the command's help text. */
void wardctl_inject_usage(FILE *out);

#endif
