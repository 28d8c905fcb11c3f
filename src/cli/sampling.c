/* The sampling and stopping options of pldr generate and pldr batch: one
 * parser, one set of messages, one mapping to pldr_generate_params. */
#include "config.h"

#include <getopt.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

void cli_sampling_init(cli_sampling *s)
{
    *s = (cli_sampling){0};
    s->seed = -1;
    s->top_p = 1.0;
    s->repeat_penalty = 1.0;
    s->repeat_last_n = 64;
}

int cli_sampling_option(const char *cmd, int c, const char *arg, cli_sampling *s, int *rc)
{
    *rc = EXIT_OK;
    switch (c) {
    case CLI_O_TEMP:
        if (cli_parse_double(arg, 0.0, 1e6, &s->temp))
            *rc = cli_usage_error(cmd, "--temp must be a number from 0 to 1e6, not '%s'", arg);
        return 1;
    case CLI_O_TOPK:
        if (cli_parse_int(arg, 0, 1L << 24, &s->top_k))
            *rc = cli_usage_error(cmd, "--top-k must be an integer >= 0, not '%s'", arg);
        return 1;
    case CLI_O_TOPP:
        if (cli_parse_double(arg, 0.0, 1.0, &s->top_p) || s->top_p <= 0.0)
            *rc = cli_usage_error(cmd, "--top-p must be in (0, 1], not '%s'", arg);
        return 1;
    case CLI_O_MINP:
        if (cli_parse_double(arg, 0.0, 1.0, &s->min_p))
            *rc = cli_usage_error(cmd, "--min-p must be in [0, 1], not '%s'", arg);
        return 1;
    case CLI_O_REPEAT:
        if (cli_parse_double(arg, 0.0, 1e6, &s->repeat_penalty) || s->repeat_penalty <= 0.0)
            *rc = cli_usage_error(cmd, "--repeat-penalty must be a number > 0, not '%s'", arg);
        return 1;
    case CLI_O_REPEAT_N:
        if (cli_parse_int(arg, -1, 1L << 24, &s->repeat_last_n))
            *rc = cli_usage_error(cmd, "--repeat-last-n must be an integer >= -1, not '%s'", arg);
        return 1;
    case CLI_O_PRESENCE:
        if (cli_parse_double(arg, -1e6, 1e6, &s->presence_penalty))
            *rc = cli_usage_error(cmd, "--presence-penalty must be a number, not '%s'", arg);
        return 1;
    case CLI_O_FREQUENCY:
        if (cli_parse_double(arg, -1e6, 1e6, &s->frequency_penalty))
            *rc = cli_usage_error(cmd, "--frequency-penalty must be a number, not '%s'", arg);
        return 1;
    case CLI_O_SEED:
        if (cli_parse_int(arg, 0, 0x7fffffffffffffffL, &s->seed))
            *rc = cli_usage_error(cmd, "--seed must be a non-negative integer, not '%s'", arg);
        return 1;
    case CLI_O_STOP:
        if (!arg[0])
            *rc = cli_usage_error(cmd, "--stop needs a non-empty text");
        else if (s->n_stop == CLI_MAX_STOP)
            *rc = cli_usage_error(cmd, "at most %d --stop strings", CLI_MAX_STOP);
        else
            s->stop[s->n_stop++] = arg;
        return 1;
    case CLI_O_IGNORE_EOS: s->ignore_eos = 1; return 1;
    default: return 0;
    }
}

void cli_sampling_apply(const cli_sampling *s, pldr_generate_params *gp)
{
    gp->temperature = (float)s->temp;
    gp->top_k = (int)s->top_k;
    gp->top_p = (float)s->top_p;
    gp->min_p = (float)s->min_p;
    gp->repeat_penalty = (float)s->repeat_penalty;
    gp->repeat_last_n = (int)s->repeat_last_n;
    gp->presence_penalty = (float)s->presence_penalty;
    gp->frequency_penalty = (float)s->frequency_penalty;
    gp->stop = s->stop;
    gp->n_stop = s->n_stop;
    gp->ignore_eos = s->ignore_eos;
    gp->seed = cli_sampling_seed(s);
}

uint64_t cli_sampling_seed(const cli_sampling *s)
{
    return s->seed >= 0 ? (uint64_t)s->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
}
