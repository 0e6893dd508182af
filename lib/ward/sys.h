/* ward/sys.h — process set-up shared by the binaries. */
#ifndef WARD_SYS_H
#define WARD_SYS_H

#include <stdint.h>

/* Raises the soft limit on open files to the hard limit (a proxy or agent holds two descriptors
 * per connection; distributions default the soft limit to 1024). Returns the new soft limit. */
uint64_t ward_sys_raise_nofile(void);

#endif
