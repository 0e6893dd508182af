/* ward/sys.h — process set-up shared by the binaries. */
#ifndef WARD_SYS_H
#define WARD_SYS_H

#include <stdint.h>

#include "ward/strbuf.h"

/* Raises the soft limit on open files to the hard limit (a proxy or agent holds two descriptors
 * per connection; distributions default the soft limit to 1024). Returns the new soft limit. */
uint64_t ward_sys_raise_nofile(void);

/* Appends the standard process metrics (Prometheus client conventions, so stock dashboards and
 * alerts work): process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
 * process_max_fds. Returns 0 or WARD_ENOMEM. */
int ward_sys_process_metrics(ward_strbuf_t *out);

#endif
