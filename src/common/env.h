/* Every environment variable the library reads is read here, and only by
 * the functions that give parameters their defaults (pldr_model_default_params,
 * pldr_context_default_params, pldr_select_device for a spec left empty, the
 * default cache directory) and by the tuners' first-use checks; never while
 * evaluating or generating. docs/engine.md ("Environment variables")
 * describes each. Strings are the environment's (NULL when unset or empty). */
#ifndef PLDR_ENV_H
#define PLDR_ENV_H

const char *pldr_env_device(void);      /* PLDR_DEVICE: the device spec when none is given */
const char *pldr_env_kernel_dir(void);  /* PLDR_KERNEL_DIR: .cl sources instead of the embedded ones */
const char *pldr_env_work_groups(void); /* PLDR_WG: work-group shape items */
const char *pldr_env_gemm(void);        /* PLDR_GEMM: clblast or own */
const char *pldr_env_kernel_limits(void); /* PLDR_KERNEL_LIMITS: tighter per-kernel limits (tests) */
int pldr_env_zero_copy(void);           /* 0 when PLDR_ZERO_COPY=0, else 1 */
int pldr_env_build_log(void);           /* 1 when PLDR_BUILD_LOG is set and not 0 */
int pldr_tuning_disabled(void);         /* 1 when PLDR_TUNING is 0, off or no */
int pldr_env_profile(void);             /* 1 when PLDR_PROFILE is set and not 0 */
int pldr_env_host_time(void);           /* 1 when PLDR_HOSTTIME is a number > 0 */
int pldr_env_pipeline(void);            /* 0 when PLDR_PIPELINE=0, else 1 */

/* The default cache directory ($XDG_CACHE_HOME/pldr or $HOME/.cache/pldr);
 * malloc'ed, NULL when neither variable is set. */
char *pldr_default_cache_dir(void);

#endif
