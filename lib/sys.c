/* sys.c — process set-up shared by the binaries (see ward/sys.h). */
#include "ward/sys.h"

#include <sys/resource.h>

uint64_t ward_sys_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl.rlim_cur = rl.rlim_max;
    }
    return (uint64_t)rl.rlim_cur;
}
