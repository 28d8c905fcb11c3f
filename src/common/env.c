/* The library's environment variables, all read here (see env.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/env.h"
#include "common/util.h"

static const char *str(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* set, and neither empty nor "0" */
static int on(const char *name)
{
    const char *v = str(name);
    return v && strcmp(v, "0") != 0;
}

const char *pldr_env_device(void) { return str("PLDR_DEVICE"); }
const char *pldr_env_kernel_dir(void) { return str("PLDR_KERNEL_DIR"); }
const char *pldr_env_gemm(void) { return str("PLDR_GEMM"); }
const char *pldr_env_kernel_limits(void) { return getenv("PLDR_KERNEL_LIMITS"); }
int pldr_env_build_log(void) { return on("PLDR_BUILD_LOG"); }
int pldr_env_profile(void) { return on("PLDR_PROFILE"); }

const char *pldr_env_work_groups(void)
{
    /* an empty PLDR_WG is "no items", as before */
    return getenv("PLDR_WG");
}

int pldr_env_zero_copy(void)
{
    const char *v = getenv("PLDR_ZERO_COPY");
    return !(v && strcmp(v, "0") == 0);
}

int pldr_tuning_disabled(void)
{
    const char *e = getenv("PLDR_TUNING");
    return e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "no") == 0);
}

int pldr_env_host_time(void)
{
    const char *v = getenv("PLDR_HOSTTIME");
    return v && atoi(v) > 0;
}

int pldr_env_pipeline(void)
{
    const char *v = getenv("PLDR_PIPELINE");
    return !(v && strcmp(v, "0") == 0);
}

char *pldr_default_cache_dir(void)
{
    const char *xdg = str("XDG_CACHE_HOME");
    if (xdg)
        return pldr_path_join(xdg, "pldr");
    const char *home = str("HOME");
    if (home)
        return pldr_path_join(home, ".cache/pldr");
    return NULL;
}
