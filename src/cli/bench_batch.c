/* pldr bench -b: throughput of several sequences decoded together, with
 * llama-batched-bench's columns. For each batch size B, prompt length PP
 * and decode length TG: B prompts of PP tokens are prefilled (each its own
 * forward), then TG steps decode one token of every sequence in one batch.
 *   N_KV = B * (PP + TG), S_PP = B * PP / T_PP, S_TG = B * TG / T_TG,
 *   S = N_KV / (T_PP + T_TG); S_TG / B is the speed each sequence sees. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "bench_batch.h"

typedef struct bres {
    int dev, dtype, cache, pp, tg, b;
    double t_pp, t_tg; /* means over the repetitions */
    double s_tg_sd;
} bres;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One run: B prompts of pp tokens, then tg batched steps; times in *t_pp, *t_tg. */
static pldr_status run_once(pldr_context *ctx, const int32_t *ids, int B, int pp, int tg, double *t_pp, double *t_tg)
{
    pldr_batch_entry *e = calloc((size_t)B, sizeof *e);
    int32_t *next = calloc((size_t)B, sizeof *next);
    if (!e || !next) {
        free(e);
        free(next);
        return PLDR_ERR_HOST_MEMORY;
    }
    pldr_status st = PLDR_OK;
    for (int s = 0; s < B; s++) {
        pldr_seq_reset(ctx, s);
        e[s] = (pldr_batch_entry){s, ids + s, pp};
    }
    double t0 = now_s();
    if (B == 1) /* the single-sequence path, with its greedy step ahead */
        st = pldr_eval_greedy(ctx, ids, pp, &next[0]);
    else
        st = pldr_eval_batch(ctx, e, B, NULL, next);
    /* the decode timer starts on an idle device: no step computed ahead */
    if (st == PLDR_OK)
        st = pldr_context_finish(ctx);
    double t1 = now_s();
    for (int s = 0; s < B; s++)
        e[s] = (pldr_batch_entry){s, &next[s], 1};
    for (int k = 0; k < tg && st == PLDR_OK; k++)
        st = B == 1 ? pldr_eval_greedy(ctx, &next[0], 1, &next[0]) : pldr_eval_batch(ctx, e, B, NULL, next);
    double t2 = now_s();
    *t_pp = t1 - t0;
    *t_tg = t2 - t1;
    free(e);
    free(next);
    return st;
}

static const char *const cache_name[3] = {"none", "kv", "kvg"};

static void print_md(const bench_batch_args *a, const pldr_device_info *devs, const bres *r, int n)
{
    for (int d = 0; d < a->n_dev; d++)
        printf("device %d: %s (%s, %s), driver %s, %u compute units\n", devs[d].index, devs[d].name, devs[d].platform,
               devs[d].type, devs[d].driver_version, devs[d].compute_units);
    printf("\n| model | device | dtype | cache | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | "
           "S_TG/seq t/s | T s | S t/s |\n");
    printf("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++) {
        const bres *x = &r[i];
        const double nkv = (double)x->b * (x->pp + x->tg), t = x->t_pp + x->t_tg;
        printf("| %s | %s | %s | %s | %d | %d | %d | %.0f | %.3f | %.2f | %.3f | %.2f ± %.2f | %.2f | %.3f | %.2f |\n",
               a->model_name, devs[x->dev].name, pldr_dtype_name((pldr_dtype)x->dtype), cache_name[x->cache], x->pp, x->tg, x->b, nkv,
               x->t_pp, (double)x->b * x->pp / x->t_pp, x->t_tg, (double)x->b * x->tg / x->t_tg, x->s_tg_sd,
               (double)x->tg / x->t_tg, t, nkv / t);
    }
}

static void print_csv(const bench_batch_args *a, const pldr_device_info *devs, const bres *r, int n)
{
    printf("model,device,dtype,cache,pp,tg,batch,n_kv,t_pp_s,s_pp_tps,t_tg_s,s_tg_tps,sd_tg_tps,per_seq_tg_tps,t_s,"
           "s_tps\n");
    for (int i = 0; i < n; i++) {
        const bres *x = &r[i];
        const double nkv = (double)x->b * (x->pp + x->tg), t = x->t_pp + x->t_tg;
        printf("%s,\"%s\",%s,%s,%d,%d,%d,%.0f,%.4f,%.3f,%.4f,%.3f,%.3f,%.3f,%.4f,%.3f\n", a->model_name,
               devs[x->dev].name, pldr_dtype_name((pldr_dtype)x->dtype), cache_name[x->cache], x->pp, x->tg, x->b, nkv, x->t_pp,
               (double)x->b * x->pp / x->t_pp, x->t_tg, (double)x->b * x->tg / x->t_tg, x->s_tg_sd,
               (double)x->tg / x->t_tg, t, nkv / t);
    }
}

static void print_json(const bench_batch_args *a, const pldr_device_info *devs, const bres *r, int n)
{
    printf("{\n  \"model\": \"%s\",\n  \"results\": [\n", a->model_name);
    for (int i = 0; i < n; i++) {
        const bres *x = &r[i];
        const double nkv = (double)x->b * (x->pp + x->tg), t = x->t_pp + x->t_tg;
        printf("    {\"device\": \"%s\", \"dtype\": \"%s\", \"cache\": \"%s\", \"batch\": %d, \"pp\": %d, \"tg\": %d, "
               "\"n_kv\": %.0f, \"t_pp_s\": %.4f, \"s_pp_tps\": %.3f, \"t_tg_s\": %.4f, \"s_tg_tps\": %.3f, "
               "\"sd_tg_tps\": %.3f, \"per_seq_tg_tps\": %.3f, \"t_s\": %.4f, \"s_tps\": %.3f}%s\n",
               devs[x->dev].name, pldr_dtype_name((pldr_dtype)x->dtype), cache_name[x->cache], x->b, x->pp, x->tg, nkv, x->t_pp,
               (double)x->b * x->pp / x->t_pp, x->t_tg, (double)x->b * x->tg / x->t_tg, x->s_tg_sd,
               (double)x->tg / x->t_tg, t, nkv / t, i + 1 < n ? "," : "");
    }
    printf("  ]\n}\n");
}

/* Aggregate decode speed (S_TG) against B, one line per device, dtype,
 * cache and (PP, TG); B on a log2 axis. */
static int write_svg(const char *path, const bench_batch_args *a, const pldr_device_info *devs, const bres *r, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    const double W = 720, H = 440, x0 = 70, y0 = 30, pw = 460, ph = 340;
    double ymax = 0, bmax = 1;
    for (int i = 0; i < n; i++) {
        ymax = fmax(ymax, (double)r[i].b * r[i].tg / r[i].t_tg);
        bmax = fmax(bmax, r[i].b);
    }
    ymax = ymax > 0 ? ymax * 1.1 : 1;
    const double lb = fmax(log2(bmax), 1);
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                                         "#7f7f7f"};
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"18\">%s: aggregate decode tokens/s against sequences decoded together (B)</text>\n",
            x0, a->model_name);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"black\"/>\n", x0, y0,
            pw, ph);
    for (int k = 0; k <= 4; k++) {
        const double v = ymax * k / 4, y = y0 + ph - ph * k / 4;
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.0f\" y=\"%.1f\" "
                   "text-anchor=\"end\">%.0f</text>\n", x0, y, x0 + pw, y, x0 - 6, y + 4, v);
    }
    for (double b = 1; b <= bmax; b *= 2) {
        const double x = x0 + pw * log2(b) / lb;
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", x, y0 + ph + 16, b);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">B</text>\n", x0 + pw / 2, y0 + ph + 34);
    int series = 0;
    for (int i = 0; i < n; i++) {
        int first = 1; /* the first result of its series */
        for (int j = 0; j < i && first; j++)
            first = !(r[j].dev == r[i].dev && r[j].dtype == r[i].dtype && r[j].cache == r[i].cache &&
                      r[j].pp == r[i].pp && r[j].tg == r[i].tg);
        if (!first)
            continue;
        const char *col = colors[series % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int j = i; j < n; j++)
            if (r[j].dev == r[i].dev && r[j].dtype == r[i].dtype && r[j].cache == r[i].cache && r[j].pp == r[i].pp &&
                r[j].tg == r[i].tg)
                fprintf(f, "%.1f,%.1f ", x0 + pw * log2(r[j].b) / lb,
                        y0 + ph - ph * ((double)r[j].b * r[j].tg / r[j].t_tg) / ymax);
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s, %s, %s, pp%d tg%d</text>\n", x0 + pw + 10,
                y0 + 14 + 16 * series, col, devs[r[i].dev].name, pldr_dtype_name((pldr_dtype)r[i].dtype), cache_name[r[i].cache],
                r[i].pp, r[i].tg);
        series++;
    }
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}

int bench_batch_run(const bench_batch_args *a)
{
    const int per = a->n_b * a->n_pp * a->n_tg * a->n_caches * a->n_dtypes;
    bres *res = calloc((size_t)(per * a->n_dev + 1), sizeof *res);
    if (!res)
        return cli_report(PLDR_ERR_HOST_MEMORY);
    int n = 0, rc = EXIT_OK;
    long max_b = 1, max_pp = 1, max_tg = 0;
    for (int i = 0; i < a->n_b; i++)
        max_b = a->b[i] > max_b ? a->b[i] : max_b;
    for (int i = 0; i < a->n_pp; i++)
        max_pp = a->pp[i] > max_pp ? a->pp[i] : max_pp;
    for (int i = 0; i < a->n_tg; i++)
        max_tg = a->tg[i] > max_tg ? a->tg[i] : max_tg;
    for (int d = 0; d < a->n_dev && rc == EXIT_OK; d++) {
        char spec[32];
        snprintf(spec, sizeof spec, "%d", a->devs[d].index);
        for (int di = 0; di < a->n_dtypes && rc == EXIT_OK; di++) {
            pldr_model *model = NULL;
            if ((rc = cli_load_model(a->model_dir, spec, (pldr_dtype)a->dtypes[di], &model)) != EXIT_OK)
                break;
            const pldr_config *cfg = pldr_model_config(model);
            const int need = (int)(max_pp + max_tg);
            if (need > cfg->max_position) {
                fprintf(stderr, "pldr bench: a test needs %d positions, more than max_position_embeddings (%d)\n",
                        need, cfg->max_position);
                pldr_model_free(model);
                rc = EXIT_CONTEXT;
                break;
            }
            const int n_ids = need + (int)max_b;
            int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
            srand((unsigned)a->seed);
            for (int i = 0; i < n_ids && ids; i++)
                ids[i] = 6 + rand() % (cfg->vocab_size > 6 ? cfg->vocab_size - 6 : 1);
            for (int ci = 0; ci < a->n_caches && rc == EXIT_OK && ids; ci++) {
                for (int bi = 0; bi < a->n_b && rc == EXIT_OK; bi++) {
                    pldr_context_params cp = pldr_context_default_params();
                    cp.cache_mode = (pldr_cache_mode)a->caches[ci];
                    cp.n_ctx = need;
                    cp.n_seq = (int)a->b[bi];
                    cp.shared_g = a->gcache ? PLDR_SHARED_G_EXTERNAL : PLDR_SHARED_G_NONE;
                    pldr_context *ctx = NULL;
                    pldr_status st = pldr_context_new(model, &cp, &ctx);
                    if (st != PLDR_OK) {
                        rc = cli_report(st);
                        break;
                    }
                    if (a->gcache && (rc = cli_apply_gcache(ctx, model, a->gcache)) != EXIT_OK) {
                        pldr_context_free(ctx);
                        break;
                    }
                    for (int pi = 0; pi < a->n_pp && rc == EXIT_OK; pi++)
                        for (int ti = 0; ti < a->n_tg && rc == EXIT_OK; ti++) {
                            bres *x = &res[n];
                            *x = (bres){d, a->dtypes[di], a->caches[ci], (int)a->pp[pi], (int)a->tg[ti],
                                        (int)a->b[bi], 0, 0, 0};
                            double s = 0, s2 = 0;
                            for (int k = -1; k < a->reps; k++) { /* k = -1: warm-up */
                                double tp, tt;
                                st = run_once(ctx, ids, x->b, x->pp, x->tg, &tp, &tt);
                                if (st != PLDR_OK) {
                                    rc = cli_report(st);
                                    break;
                                }
                                if (k < 0)
                                    continue;
                                x->t_pp += tp / a->reps;
                                x->t_tg += tt / a->reps;
                                const double v = (double)x->b * x->tg / tt;
                                s += v;
                                s2 += v * v;
                            }
                            if (rc != EXIT_OK)
                                break;
                            const double m = s / a->reps;
                            x->s_tg_sd = a->reps > 1 ? sqrt(fmax(s2 - a->reps * m * m, 0) / (a->reps - 1)) : 0;
                            fprintf(stderr, "  %s %s %s pp%d tg%d B=%d: prefill %.2f t/s, decode %.2f t/s "
                                    "(%.2f per sequence)\n", a->devs[d].name, pldr_dtype_name((pldr_dtype)x->dtype),
                                    cache_name[x->cache], x->pp, x->tg, x->b, x->b * x->pp / x->t_pp,
                                    x->b * x->tg / x->t_tg, x->tg / x->t_tg);
                            n++;
                        }
                    pldr_context_free(ctx);
                }
            }
            free(ids);
            pldr_model_free(model);
        }
    }
    if (rc == EXIT_OK) {
        if (strcmp(a->format, "json") == 0)
            print_json(a, a->devs, res, n);
        else if (strcmp(a->format, "csv") == 0)
            print_csv(a, a->devs, res, n);
        else if (strcmp(a->format, "svg") == 0) {
            if (write_svg(a->plot, a, a->devs, res, n) != 0) {
                fprintf(stderr, "pldr bench: cannot write %s\n", a->plot);
                rc = EXIT_RUNTIME;
            }
        } else
            print_md(a, a->devs, res, n);
    }
    free(res);
    return rc;
}
