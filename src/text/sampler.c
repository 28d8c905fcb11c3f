/* Sampling the next token: temperature, top-k, top-p (nucleus) and min-p, with a
 * seeded generator (xoshiro256**) so that a seed reproduces a run. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct cand {
    float logit;
    int id;
};

struct pldr_sampler {
    pldr_sampler_params p;
    uint64_t s[4];
    int cap;
    struct cand *c; /* candidates, sorted by logit */
    float *prob;    /* their probabilities */
};

pldr_sampler_params pldr_sampler_default_params(void)
{
    pldr_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.seed = 0;
    return p;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(pldr_sampler *s)
{
    uint64_t *q = s->s;
    uint64_t r = rotl(q[1] * 5, 7) * 9, t = q[1] << 17;
    q[2] ^= q[0];
    q[3] ^= q[1];
    q[1] ^= q[2];
    q[0] ^= q[3];
    q[2] ^= t;
    q[3] = rotl(q[3], 45);
    return r;
}

/* Uniform in [0, 1). */
static double next_unit(pldr_sampler *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

pldr_status pldr_sampler_new(const pldr_sampler_params *params, pldr_sampler **out)
{
    *out = NULL;
    pldr_sampler_params d = pldr_sampler_default_params();
    if (!params)
        params = &d;
    if (!(params->temperature >= 0.0f) || !isfinite(params->temperature))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "temperature %g must be a finite number >= 0",
                         (double)params->temperature);
    if (params->top_k < 0)
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "top-k %d must be >= 0", params->top_k);
    if (!(params->top_p > 0.0f && params->top_p <= 1.0f))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "top-p %g must be in (0, 1]", (double)params->top_p);
    if (!(params->min_p >= 0.0f && params->min_p <= 1.0f))
        return pldr_fail(PLDR_ERR_INVALID_ARGUMENT, "min-p %g must be in [0, 1]", (double)params->min_p);
    pldr_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return pldr_fail(PLDR_ERR_HOST_MEMORY, "out of memory");
    s->p = *params;
    uint64_t x = params->seed;
    for (int i = 0; i < 4; i++)
        s->s[i] = splitmix(&x);
    *out = s;
    return PLDR_OK;
}

void pldr_sampler_free(pldr_sampler *s)
{
    if (!s)
        return;
    free(s->c);
    free(s->prob);
    free(s);
}

int pldr_sampler_is_greedy(const pldr_sampler *s) { return s->p.temperature == 0.0f || s->p.top_k == 1; }

static int by_logit_desc(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

int32_t pldr_sampler_sample(pldr_sampler *s, const float *logits, int n)
{
    if (n <= 0)
        return 0;
    if (pldr_sampler_is_greedy(s)) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (logits[i] > logits[best])
                best = i;
        return best;
    }
    if (s->cap < n) {
        struct cand *ni = realloc(s->c, (size_t)n * sizeof *ni);
        if (ni)
            s->c = ni;
        float *np = realloc(s->prob, (size_t)n * sizeof *np);
        if (np)
            s->prob = np;
        if (!ni || !np) { /* no memory to sample: fall back to the argmax */
            int best = 0;
            for (int i = 1; i < n; i++)
                if (logits[i] > logits[best])
                    best = i;
            return best;
        }
        s->cap = n;
    }
    for (int i = 0; i < n; i++) {
        s->c[i].logit = logits[i];
        s->c[i].id = i;
    }
    qsort(s->c, (size_t)n, sizeof *s->c, by_logit_desc);
    int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
    const double inv_t = 1.0 / s->p.temperature, top = s->c[0].logit;
    double sum = 0.0;
    for (int i = 0; i < k; i++) {
        s->prob[i] = (float)exp((s->c[i].logit - top) * inv_t);
        sum += s->prob[i];
    }
    /* nucleus: the smallest prefix whose probability reaches top_p */
    double acc = 0.0;
    int keep = k;
    for (int i = 0; i < k; i++) {
        acc += s->prob[i] / sum;
        if (acc >= s->p.top_p) {
            keep = i + 1;
            break;
        }
    }
    /* min-p: the tokens at least min_p times as likely as the most likely
     * (prob[0] is exp(0) = 1) */
    if (s->p.min_p > 0.0f)
        for (int i = 1; i < keep; i++)
            if (s->prob[i] < s->p.min_p) {
                keep = i;
                break;
            }
    double mass = 0.0;
    for (int i = 0; i < keep; i++)
        mass += s->prob[i];
    double r = next_unit(s) * mass;
    for (int i = 0; i < keep; i++) {
        r -= s->prob[i];
        if (r < 0.0)
            return s->c[i].id;
    }
    return s->c[keep - 1].id;
}
