/* Matrix products of a forward over many tokens on CPU devices:
 *   C[M, N] = A[M, K] . W[N, K]^T     (row-major; W rows padded to ldw)
 * W is a weight matrix in the weight dtype (WT, see kernels/common.cl: half,
 * bfloat16 and quantized weights are widened as they are loaded, so such a
 * model needs no float32 copy of W).
 * A work-group is one work-item computing a block of GM_BM x GM_BN register
 * tiles of GM_TM rows of A by GM_TN rows of W, walking K sixteen floats at a
 * time (one 512-bit vector on AVX-512, two 256-bit ones on AVX2): the GM_TN
 * rows of W of a tile stay in the first-level cache while the work-item walks
 * the GM_BM tiles of A, whose GM_BM * GM_TM rows stay in the second level.
 * Rows past M or N are clamped on load and not written. */
/* a work-group's block is GM_ROWS rows of A by GM_COLS rows of W, given by
 * the host (src/model/model.h, which sizes the launch by it); on 2-core PoCL, tiles
 * of 2x8, 4x2 and 8x2 ran within 10% of 4x4 */
#define GM_TM 4
#define GM_TN 4
#define GM_BM (GM_ROWS / GM_TM)
#define GM_BN (GM_COLS / GM_TN)
#if GM_ROWS % GM_TM != 0 || GM_COLS % GM_TN != 0
#error "GM_ROWS and GM_COLS must be multiples of the register tile"
#endif

#if OWN_GEMM
/* Rows of W in a dtype other than float32 are widened once per tile of
 * GM_TN rows into local memory (GM_WCACHE floats a row, the longest K of the
 * model's products) and the GM_BM tiles of A multiply the floats: widened
 * inside the loop over A's tiles, each weight was converted GM_BM times.
 * Where that does not fit in GM_LOCAL bytes (the host's share of the
 * device's local memory) the tiles widen as they load. */
#define GM_KMAX (((DFF > DMODEL ? DFF : DMODEL) + 15) / 16 * 16)
#if WEIGHT_TYPE != 0 && GM_TN * GM_KMAX * 4 <= GM_LOCAL
#define GM_WCACHE GM_KMAX
#else
#define GM_WCACHE 0
#endif

/* The GM_BM tiles of A of this block against GM_TN rows of W starting at
 * row n0, whose weights LW(j, k) and LW1(j, k) read (16 at k, one at k). */
#define GM_TILES(LW16, LW1)                                                                        \
    for (int mt = 0; mt < GM_BM; mt++) {                                                           \
        const int m0 = m_blk + mt * GM_TM;                                                         \
        if (m0 >= M)                                                                               \
            break;                                                                                 \
        __global const float *ar[GM_TM];                                                           \
        _Pragma("unroll") for (int i = 0; i < GM_TM; i++)                                          \
            ar[i] = a + a_off + (idx_t)min(m0 + i, M - 1) * lda;                                   \
        float16 acc[GM_TM][GM_TN];                                                                 \
        _Pragma("unroll") for (int i = 0; i < GM_TM; i++)                                          \
            _Pragma("unroll") for (int j = 0; j < GM_TN; j++)                                      \
                acc[i][j] = 0.0f;                                                                  \
        int k = 0;                                                                                 \
        for (; k + 16 <= K; k += 16) {                                                             \
            float16 av[GM_TM], wv[GM_TN];                                                          \
            _Pragma("unroll") for (int i = 0; i < GM_TM; i++)                                      \
                av[i] = vload16(0, ar[i] + k);                                                     \
            _Pragma("unroll") for (int j = 0; j < GM_TN; j++)                                      \
                wv[j] = LW16(j, k);                                                                \
            _Pragma("unroll") for (int i = 0; i < GM_TM; i++)                                      \
                _Pragma("unroll") for (int j = 0; j < GM_TN; j++)                                  \
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);                                      \
        }                                                                                          \
        _Pragma("unroll") for (int i = 0; i < GM_TM; i++) {                                        \
            float s[GM_TN];                                                                        \
            _Pragma("unroll") for (int j = 0; j < GM_TN; j++)                                      \
                s[j] = hsum16(acc[i][j]);                                                          \
            for (int kk = k; kk < K; kk++)                                                         \
                _Pragma("unroll") for (int j = 0; j < GM_TN; j++)                                  \
                    s[j] += ar[i][kk] * LW1(j, kk);                                                \
            if (m0 + i < M)                                                                        \
                for (int j = 0; j < GM_TN; j++)                                                    \
                    if (n0 + j < N)                                                                \
                        c[c_off + (idx_t)(m0 + i) * ldc + n0 + j] = s[j];                          \
        }                                                                                          \
    }

#define GM_W16(j, k) LOAD_W16(wr[j], sr[j], k)
#define GM_W1(j, k) LOAD_W(wr[j], sr[j], k)
#define GM_C16(j, k) vload16(0, wc + (j) * GM_WCACHE + (k))
#define GM_C1(j, k) wc[(j) * GM_WCACHE + (k)]

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_cpu(__global const float *a, const int a_off, const int lda, __global const WT *w, __global const ST *ws,
              const int ldw,
              __global float *c, const int c_off, const int ldc, const int M, const int N, const int K)
{
#if GM_WCACHE
    __local float wc[GM_TN * GM_WCACHE];
#endif
    /* work-groups in M-major order: neighbours share their rows of W */
    const int blocks_m = (M + GM_TM * GM_BM - 1) / (GM_TM * GM_BM);
    const int m_blk = get_group_id(0) % blocks_m * GM_TM * GM_BM, n_blk = get_group_id(0) / blocks_m * GM_TN * GM_BN;
    for (int nt = 0; nt < GM_BN; nt++) {
        const int n0 = n_blk + nt * GM_TN;
        if (n0 >= N)
            break;
        __global const WT *wr[GM_TN];
        __global const ST *sr[GM_TN];
#pragma unroll
        for (int j = 0; j < GM_TN; j++) {
            const idx_t wo = (idx_t)min(n0 + j, N - 1) * ldw;
            wr[j] = WPTR(w, wo);
            sr[j] = SPTR(ws, wo);
        }
#if GM_WCACHE
        if (K <= GM_WCACHE) {
            for (int j = 0; j < GM_TN; j++) {
                int k = 0;
                for (; k + 16 <= K; k += 16)
                    vstore16(LOAD_W16(wr[j], sr[j], k), 0, wc + j * GM_WCACHE + k);
                for (; k < K; k++)
                    wc[j * GM_WCACHE + k] = LOAD_W(wr[j], sr[j], k);
            }
            GM_TILES(GM_C16, GM_C1)
            continue;
        }
#endif
        GM_TILES(GM_W16, GM_W1)
    }
}
#endif
