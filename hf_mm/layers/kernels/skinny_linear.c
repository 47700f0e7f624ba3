/* y = x @ w.T + b for few rows of x (cached decoding), streaming the weight once at memory bandwidth.
 *
 * x (M, K), w (N, K), b (N) or NULL, y (M, N); float32, row-major, K % 16 == 0. Weight rows are taken 8 at a
 * time; each (weight row, x row) dot product is summed in 16-lane vectors and reduced with a fixed pairwise
 * tree, so a row's result does not depend on M or on the thread count. Built by hf_mm/layers/native.py with
 * `-O3 -march=native -fopenmp`; GCC vector extensions map the 16-lane vectors to AVX-512, AVX2 or SSE.
 */
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

#define MR_SEQ 4  /* x rows per pass, row-major walk (short K) */
#define UNROLL 4  /* independent accumulators per dot product in the row-major walk */
#define MR_IL 2   /* x rows per pass, interleaved walk (long K) */
#define LONG_K 1024

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline v8 fold(v16 v) {
    return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}
static inline v8 pairs(v8 a, v8 b) {
    return __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) + __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
}
static inline v8 quads(v8 a, v8 b) {
    return __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) + __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
}
/* the 8 lane sums of acc[0..7], in order */
static inline v8 sum8(const v16 *acc) {
    v8 lo = quads(pairs(fold(acc[0]), fold(acc[1])), pairs(fold(acc[2]), fold(acc[3])));
    v8 hi = quads(pairs(fold(acc[4]), fold(acc[5])), pairs(fold(acc[6]), fold(acc[7])));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
}
static inline void store8(float *y, const float *b, v8 s) {
    if (b) { v8 bb; memcpy(&bb, b, sizeof bb); s += bb; }
    memcpy(y, &s, sizeof s);
}

/* Short K: each weight row read front to back (one sequential stream), UNROLL accumulators per x row. */
static inline __attribute__((always_inline)) void tile_rowwise(
        const float *x, const float *w, const float *b, float *y, long K, long N, long n0, const int MR) {
    v16 acc[MR_SEQ][8];
    for (int r = 0; r < 8; r++) {
        const float *wr = w + (n0 + r) * K;
        v16 a[MR_SEQ][UNROLL];
        for (int m = 0; m < MR; m++) for (int u = 0; u < UNROLL; u++) a[m][u] = (v16){0};
        long k = 0;
        for (; k + 16 * UNROLL <= K; k += 16 * UNROLL) {
            v16 wv[UNROLL];
            for (int u = 0; u < UNROLL; u++) wv[u] = load16(wr + k + 16 * u);
            for (int m = 0; m < MR; m++)
                for (int u = 0; u < UNROLL; u++) a[m][u] += wv[u] * load16(x + m * K + k + 16 * u);
        }
        for (; k < K; k += 16) {
            v16 wv = load16(wr + k);
            for (int m = 0; m < MR; m++) a[m][0] += wv * load16(x + m * K + k);
        }
        for (int m = 0; m < MR; m++) acc[m][r] = (a[m][0] + a[m][1]) + (a[m][2] + a[m][3]);
    }
    for (int m = 0; m < MR; m++) store8(y + m * N + n0, b ? b + n0 : 0, sum8(acc[m]));
}

/* Long K: the 8 weight rows walked side by side, so x stays in L1 across them. */
static inline __attribute__((always_inline)) void tile_interleaved(
        const float *x, const float *w, const float *b, float *y, long K, long N, long n0, const int MR) {
    v16 acc[MR_IL][8];
    for (int m = 0; m < MR; m++) for (int r = 0; r < 8; r++) acc[m][r] = (v16){0};
    const float *wt = w + n0 * K;
    for (long k = 0; k < K; k += 16) {
        v16 wv[8];
        for (int r = 0; r < 8; r++) wv[r] = load16(wt + r * K + k);
        for (int m = 0; m < MR; m++) {
            v16 xv = load16(x + m * K + k);
            for (int r = 0; r < 8; r++) acc[m][r] += wv[r] * xv;
        }
    }
    for (int m = 0; m < MR; m++) store8(y + m * N + n0, b ? b + n0 : 0, sum8(acc[m]));
}

static void tile8(const float *x, const float *w, const float *b, float *y, long M, long K, long N, long n0) {
    long m = 0;
    if (K >= LONG_K) {
        for (; m + MR_IL <= M; m += MR_IL) tile_interleaved(x + m * K, w, b, y + m * N, K, N, n0, MR_IL);
        for (; m < M; m++) tile_interleaved(x + m * K, w, b, y + m * N, K, N, n0, 1);
        return;
    }
    for (; m + 4 <= M; m += 4) tile_rowwise(x + m * K, w, b, y + m * N, K, N, n0, 4);
    switch (M - m) {
        case 3: tile_rowwise(x + m * K, w, b, y + m * N, K, N, n0, 3); break;
        case 2: tile_rowwise(x + m * K, w, b, y + m * N, K, N, n0, 2); break;
        case 1: tile_rowwise(x + m * K, w, b, y + m * N, K, N, n0, 1); break;
    }
}

/* the last N % 8 outputs, one dot product at a time */
static void tail(const float *x, const float *w, const float *b, float *y, long M, long K, long N, long n0) {
    for (long n = n0; n < N; n++)
        for (long m = 0; m < M; m++) {
            v16 a = (v16){0};
            for (long k = 0; k < K; k += 16) a += load16(w + n * K + k) * load16(x + m * K + k);
            float s = 0;
            for (int i = 0; i < 16; i++) s += a[i];
            y[m * N + n] = s + (b ? b[n] : 0.0f);
        }
}

int hf_mm_skinny_linear(const float *x, const float *w, const float *b, float *y, long M, long K, long N, int threads) {
    if (K % 16 != 0 || M < 1 || N < 1) return 1;
    long tiles = N / 8;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long t = 0; t < tiles; t++) tile8(x, w, b, y, M, K, N, 8 * t);
    tail(x, w, b, y, M, K, N, 8 * tiles);
    return 0;
}
