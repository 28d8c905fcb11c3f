/* Kernel launches and their profiling (PLDR_PROFILE=1, PLDR_HOSTTIME=1). */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "common/util.h"

pldr_status engine_launch(pldr_context *c, cl_kernel k, const char *name, size_t offset, size_t global,
                          size_t local, int n_args, const arg *args)
{
    const double a0 = c->host_timing ? pldr_now() : 0.0;
    for (int i = 0; i < n_args; i++) {
        cl_int err = clSetKernelArg(k, (cl_uint)i, args[i].size, args[i].value);
        if (err != CL_SUCCESS) {
            char msg[128];
            snprintf(msg, sizeof msg, "setting argument %d of kernel %s", i, name);
            return pldr_cl_fail(&c->m->ocl, err, msg);
        }
    }
    if (global == 0)
        return PLDR_OK;
    const double h0 = c->profile || c->host_timing ? pldr_now() : 0.0;
    if (c->host_timing)
        c->host_arg_ms += (h0 - a0) * 1e3;
    cl_event ev = NULL, *evp = NULL;
    if (c->profile && c->n_events < c->cap_events)
        evp = &ev;
    cl_int err = clEnqueueNDRangeKernel(c->queue, k, 1, offset ? &offset : NULL, &global,
                                        local ? &local : NULL, 0, NULL, evp);
    if (evp && err == CL_SUCCESS) {
        c->events[c->n_events] = ev;
        c->event_names[c->n_events++] = name;
    }
    if (c->profile || c->host_timing) {
        const double ms = (pldr_now() - h0) * 1e3;
        c->host_enq_ms += ms;
        c->host_launches++;
        if (c->host_timing)
            engine_prof_add(c, name, ms);
    }
    if (err != CL_SUCCESS) {
        char msg[128];
        snprintf(msg, sizeof msg, "launching kernel %s", name);
        return pldr_cl_fail(&c->m->ocl, err, msg);
    }
    return PLDR_OK;
}

void engine_prof_add(pldr_context *c, const char *name, double ms)
{
    int i = 0;
    while (i < c->n_prof && strcmp(c->prof[i].name, name) != 0)
        i++;
    if (i == c->n_prof) {
        if (c->n_prof == (int)(sizeof c->prof / sizeof c->prof[0]))
            return;
        c->prof[c->n_prof++] = (struct prof_entry){name, 0.0, 0};
    }
    c->prof[i].ms += ms;
    c->prof[i].count++;
}

/* Adds the times of the kernels recorded since the last call (after a sync). */
void engine_prof_collect(pldr_context *c)
{
    cl_ulong prev_end = 0;
    for (int i = 0; i < c->n_events; i++) {
        cl_ulong t0 = 0, t1 = 0;
        clGetEventProfilingInfo(c->events[i], CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL);
        clGetEventProfilingInfo(c->events[i], CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
        engine_prof_add(c, c->event_names[i], (double)(t1 - t0) * 1e-6);
        if (prev_end && t0 > prev_end) {
            c->prof_gap_ms += (double)(t0 - prev_end) * 1e-6;
            c->prof_gaps++;
        }
        prev_end = t1;
        clReleaseEvent(c->events[i]);
    }
    c->n_events = 0;
}

void engine_prof_print(pldr_context *c)
{
    double total = 0.0;
    for (int i = 0; i < c->n_prof; i++)
        total += c->prof[i].ms;
    pldr_log(PLDR_LOG_INFO, "pldr profile (device time per kernel, %s):\n", c->m->ocl.info.name);
    for (int i = 0; i < c->n_prof; i++)
        pldr_log(PLDR_LOG_INFO, "  %-26s %9.3f ms %7ld calls %8.2f us/call %5.1f%%\n", c->prof[i].name, c->prof[i].ms,
                c->prof[i].count, 1000.0 * c->prof[i].ms / (double)c->prof[i].count,
                total > 0 ? 100.0 * c->prof[i].ms / total : 0.0);
    pldr_log(PLDR_LOG_INFO, "  idle between kernels       %9.3f ms %7ld gaps  %8.2f us/gap\n", c->prof_gap_ms, c->prof_gaps,
            c->prof_gaps ? 1000.0 * c->prof_gap_ms / (double)c->prof_gaps : 0.0);
    pldr_log(PLDR_LOG_INFO, "  host enqueue time          %9.3f ms\n", c->host_enq_ms);
}
