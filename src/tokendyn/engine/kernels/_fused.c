/* tokendyn fused tiled attention reductions (CPU). Compiled on first use by fused.py.
 *
 * For query rows i in [row_begin, row_end) and keys j (q already carries the scale beta):
 *   s_ij = <q_i, k_j> + b_j                                  (b: optional key bias)
 *   mode 0 (exp):     out_i = sum_j softmax_j(s_ij) v_j,   lse_i = log sum_j exp(s_ij)
 *   mode 1 (sigmoid): out_i = sum_j sigma(s_ij + c) v_j     (no normalisation)
 * Keys are visited in blocks of TK that stay in L1. The softmax is online and max-shifted: when a
 * block's maximum exceeds the running maximum m_i, the accumulators are rescaled by
 * exp(m_old - m_new), so the exponential never sees a positive argument (beta = 1e3 is safe).
 * Masks: causal (key j visible to query i iff j <= i + causal_offset) or a byte mask (Nq x Nk).
 * Layouts: q (Nq, dk) row-major; kT (dk, Nk); vT (dv, Nk); out (Nq, dv); one cloud per call.
 * Backward (tokendyn_attend_bwd_*), for the same rows, given dout and (mode 0) lse and
 * delta_i = <dout_i, out_i> - dlse_i, recomputes every weight per key block from the saved lse
 * (flash-attention backward; no Nq x Nk buffer):
 *   mode 0: p_ij = exp(s_ij - lse_i),  ds_ij = p_ij (<dout_i, v_j> - delta_i)
 *   mode 1: p_ij = sigma(s_ij + c),     ds_ij = p_ij (1 - p_ij) <dout_i, v_j>
 *   dq_i += sum_j ds_ij k_j,  dk_j += sum_i ds_ij q_i,  dv_j += sum_i p_ij dout_i,
 *   db_j += sum_i ds_ij                (all accumulated: the caller zeroes them)
 * The backward needs a key bias (zeros when there is none) and a db buffer.
 * Layouts: dout, dq row-major like out and q; dkT (dk, Nk); dvT (dv, Nk).
 * Dimensions up to 16 (dk == dv) are compile-time constants so every score and accumulator
 * stays in registers; R queries share each key block. Built with -O3 -march=native and the
 * value-unsafe parts of -ffast-math, never -ffast-math itself (its crtfastmath.o would set
 * flush-to-zero for the whole process).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define TK 256
#define R 4
#define MAXD 512

/* exp(x) for x <= 0 (clamped below at -87 / -708, where exp is subnormal or about to be):
 * x = n ln2 + r with n = rint(x log2e), |r| <= ln2/2 (ln2 split in two parts, so n ln2 is exact;
 * explicit fma, because -fassociative-math would merge x - n*hi - n*lo into x - n*(hi + lo) and
 * lose 1e-13 of r at n = -1000),
 * exp(r) by its Taylor polynomial (degree 7 / 13, truncation below one ulp), times 2^n built in
 * the exponent bits. rint is one vector round instruction (SSE4.1/AVX); 2^n comes from the bits
 * of n + 1.5*2^23 (2^52), whose low mantissa bits hold n in two's complement, shifted into the
 * exponent field with integer adds and shifts (AVX2 has them for 32 and 64 bits) - no
 * float->int conversion, since the double->int64 one (vcvtpd2qq) exists only with AVX-512DQ and
 * gcc scalarises a whole loop that contains it. Max relative error against libm's exp over
 * [-708, 0] (tests/engine/test_fused_exp.py): 7.7e-8 (float), 2.2e-16 (double). */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    const float r = __builtin_fmaf(n, 2.12194440e-4f, __builtin_fmaf(-n, 0.693359375f, x));
    float p = 1.98412698e-4f;
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } u = { n + 0x1.8p23f };
    u.i = (u.i + 127) << 23; /* bits(n + 1.5*2^23) = 0x4B400000 + n; the shift drops 0x4B4 */
    return p * u.f;
}

static inline double exp_f64(double x) {
    x = x < -708.0 ? -708.0 : x;
    const double n = __builtin_rint(x * 1.4426950408889634074);
    const double r = __builtin_fma(-n, 1.90821492927058770002e-10,
                                   __builtin_fma(-n, 6.93147180369123816490e-01, x));
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    union { double f; int64_t i; } u = { n + 0x1.8p52 };
    u.i = (u.i + 1023) << 52; /* bits(n + 1.5*2^52) = 0x4338000000000000 + n */
    return p * u.f;
}

#define DEFINE_BODY(T, SUF, EXPF, LOWEST, SIGCLAMP)                                              \
static inline __attribute__((always_inline)) void body_##SUF(                                    \
    const T *q, const T *kT, const T *vT, const T *kbias, const uint8_t *mask,                   \
    int64_t Nk, int64_t row_begin, int64_t row_end, int64_t causal_offset, int causal,            \
    const int mode, T sig_bias, const int64_t DK, const int64_t DV, T *out, T *lse) {             \
    T s[R][TK];                                                                                  \
    const int64_t DA = DV > 0 ? DV : 1;                                                          \
    for (int64_t i0 = row_begin; i0 < row_end; i0 += R) {                                        \
        const int64_t nr = row_end - i0 < R ? row_end - i0 : R;                                  \
        T m[R], l[R], acc[R][DA];                                                                  \
        int64_t jend[R], jmax = 0;                                                               \
        for (int r = 0; r < R; ++r) {                                                            \
            m[r] = LOWEST; l[r] = 0;                                                             \
            for (int64_t a = 0; a < DV; ++a) acc[r][a] = 0;                                      \
            int64_t je = Nk;                                                                     \
            if (causal) { je = i0 + (r < nr ? r : 0) + causal_offset + 1; je = je > Nk ? Nk : je; } \
            jend[r] = r < nr ? je : 0;                                                           \
            jmax = jend[r] > jmax ? jend[r] : jmax;                                              \
        }                                                                                        \
        for (int64_t j0 = 0; j0 < jmax; j0 += TK) {                                              \
            const int64_t nb = jmax - j0 < TK ? jmax - j0 : TK;                                  \
            for (int r = 0; r < nr; ++r) {                                                       \
                const T *qi = q + (i0 + r) * DK;                                                 \
                T *sr = s[r];                                                                    \
                const T base = mode ? sig_bias : (T)0;                                           \
                if (kbias) {                                                                     \
                    const T *kb = kbias + j0;                                                    \
                    for (int64_t j = 0; j < nb; ++j) {                                           \
                        T z = kb[j] + base;                                                      \
                        for (int64_t a = 0; a < DK; ++a) z += qi[a] * kT[a * Nk + j0 + j];       \
                        sr[j] = z;                                                               \
                    }                                                                            \
                } else {                                                                         \
                    for (int64_t j = 0; j < nb; ++j) {                                           \
                        T z = base;                                                              \
                        for (int64_t a = 0; a < DK; ++a) z += qi[a] * kT[a * Nk + j0 + j];       \
                        sr[j] = z;                                                               \
                    }                                                                            \
                }                                                                                \
                const int64_t vis = jend[r] - j0;                                                \
                if (mask) {                                                                      \
                    const uint8_t *mr = mask + (i0 + r) * Nk + j0;                               \
                    for (int64_t j = 0; j < nb; ++j) sr[j] = mr[j] ? sr[j] : LOWEST;             \
                }                                                                                \
                for (int64_t j = (vis > 0 ? vis : 0); j < nb; ++j) sr[j] = LOWEST;               \
                if (mode == 0) {                                                                 \
                    T bm = LOWEST;                                                               \
                    for (int64_t j = 0; j < nb; ++j) bm = sr[j] > bm ? sr[j] : bm;               \
                    if (bm > m[r]) {                                                             \
                        const T c = EXPF(m[r] - bm);                                             \
                        l[r] *= c;                                                               \
                        for (int64_t a = 0; a < DV; ++a) acc[r][a] *= c;                         \
                        m[r] = bm;                                                               \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
            /* Blocks with hidden (masked) keys need exact zeros; the others skip the test. */    \
            const int hidden = mask != 0 || (causal && j0 + nb > jend[0]);                       \
            for (int r = 0; r < nr; ++r) {                                                       \
                if (mode == 0 && m[r] == LOWEST) continue;                                       \
                T sa[DA], ls = 0;                                                                  \
                for (int64_t a = 0; a < DV; ++a) sa[a] = 0;                                      \
                const T mr = m[r];                                                               \
                const T *sr = s[r];                                                              \
                for (int64_t j = 0; j < nb; ++j) {                                               \
                    T e;                                                                         \
                    if (mode == 0) {                                                             \
                        e = EXPF(sr[j] - mr);                                                    \
                        if (hidden) e = sr[j] == LOWEST ? (T)0 : e;                              \
                    } else {                                                                     \
                        T z = sr[j];                                                             \
                        const int dead = z == LOWEST;                                            \
                        z = z > SIGCLAMP ? SIGCLAMP : (z < -SIGCLAMP ? -SIGCLAMP : z);           \
                        const T ex = EXPF(z > 0 ? -z : z);                                       \
                        e = dead ? (T)0 : (z > 0 ? (T)1 / ((T)1 + ex) : ex / ((T)1 + ex));       \
                    }                                                                            \
                    ls += e;                                                                     \
                    for (int64_t a = 0; a < DV; ++a) sa[a] += e * vT[a * Nk + j0 + j];          \
                }                                                                                \
                l[r] += ls;                                                                      \
                for (int64_t a = 0; a < DV; ++a) acc[r][a] += sa[a];                             \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < nr; ++r) {                                                           \
            const int64_t i = i0 + r;                                                            \
            if (mode == 0) {                                                                     \
                const T inv = l[r] > 0 ? (T)1 / l[r] : (T)0;                                     \
                for (int64_t a = 0; a < DV; ++a) out[i * DV + a] = acc[r][a] * inv;              \
                if (lse) lse[i] = l[r] > 0 ? m[r] + log(l[r]) : LOWEST;                          \
            } else {                                                                             \
                for (int64_t a = 0; a < DV; ++a) out[i * DV + a] = acc[r][a];                    \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \

#define CALL_BODY(SUF, MODE, DKC, DVC)                                                           \
    body_##SUF(q, kT, vT, kbias, mask, Nk, row_begin, row_end, causal_offset, causal, MODE,       \
               sig_bias, DKC, DVC, out, lse)

#define DISPATCH_DIMS(SUF, MODE)                                                                 \
    if (dk == dv) {                                                                              \
        switch (dk) {                                                                            \
        case 1: CALL_BODY(SUF, MODE, 1, 1); return;                                              \
        case 2: CALL_BODY(SUF, MODE, 2, 2); return;                                              \
        case 3: CALL_BODY(SUF, MODE, 3, 3); return;                                              \
        case 4: CALL_BODY(SUF, MODE, 4, 4); return;                                              \
        case 8: CALL_BODY(SUF, MODE, 8, 8); return;                                              \
        case 16: CALL_BODY(SUF, MODE, 16, 16); return;                                           \
        default: break;                                                                          \
        }                                                                                        \
    }                                                                                            \
    CALL_BODY(SUF, MODE, dk, dv); return;

#define DEFINE_ENTRY(T, SUF)                                                                     \
void tokendyn_attend_##SUF(const T *q, const T *kT, const T *vT, const T *kbias,                 \
                           const uint8_t *mask, int64_t Nk, int64_t dk, int64_t dv,              \
                           int64_t row_begin, int64_t row_end, int64_t causal_offset,            \
                           int causal, int mode, T sig_bias, T *out, T *lse) {                    \
    if (mode == 0) { DISPATCH_DIMS(SUF, 0) }                                                     \
    DISPATCH_DIMS(SUF, 1)                                                                        \
}

/* Whole clouds b in [b_begin, b_end) of a batch stored contiguously; the key bias and the mask
 * advance by their strides per cloud (stride 0: one shared by every cloud). */
#define DEFINE_BATCHED(T, SUF)                                                                   \
void tokendyn_attend_batch_##SUF(const T *q, const T *kT, const T *vT, const T *kbias,           \
                                 const uint8_t *mask, int64_t Nq, int64_t Nk, int64_t dk,        \
                                 int64_t dv, int64_t b_begin, int64_t b_end,                     \
                                 int64_t kbias_stride, int64_t mask_stride, int causal,          \
                                 int mode, T sig_bias, T *out, T *lse) {                         \
    for (int64_t b = b_begin; b < b_end; ++b)                                                    \
        tokendyn_attend_##SUF(q + b * Nq * dk, kT + b * dk * Nk, vT + b * dv * Nk,               \
                              kbias ? kbias + b * kbias_stride : 0,                              \
                              mask ? mask + b * mask_stride : 0, Nk, dk, dv, 0, Nq, 0, causal,   \
                              mode, sig_bias, out + b * Nq * dv, lse ? lse + b * Nq : 0);        \
}

DEFINE_BODY(float, f32, exp_f32, -3.0e38f, 80.0f)
DEFINE_BODY(double, f64, exp_f64, -1.0e308, 700.0)
DEFINE_ENTRY(float, f32)
DEFINE_ENTRY(double, f64)
DEFINE_BATCHED(float, f32)
DEFINE_BATCHED(double, f64)

/* Backward body. Key blocks of TKB keys are the outer loop: each block's k, v, bias and its dk,
 * dv, db sums are copied into one local buffer whose rows are TKBP apart (a stride that is not a
 * multiple of 4 KiB, so the loads and stores of the inner loop never 4K-alias), then every row
 * group of RB queries sweeps the block with everything in registers and adds its dq. Rows past
 * the end have q = dout = 0 and no visible key. HIDE (a compile-time constant) selects the inner
 * loop without visibility tests (0), with the causal limit (1) or with the byte mask (2). */
#define RB 2
#define TKB 128
#define DEFINE_BWD(T, SUF, EXPF, SIGCLAMP)                                                       \
static inline __attribute__((always_inline)) void bwd_keys_##SUF(                                \
    const T *restrict kb, const T *restrict kl, const T *restrict vl, T *restrict ak,            \
    T *restrict av, T *restrict ab, const int64_t ld, const int64_t j0, const int64_t nb,        \
    const int HIDE, const uint8_t *const *mrow, const int mode, const int64_t DK,                \
    const int64_t DV, const T (*qr)[DK], const T (*gr)[DV], const T *li, const T *di,            \
    const int64_t *jend, T (*dqa)[DK]) {                                                         \
    /* Local copies: no store in the loop can alias them, so they can live in registers. */      \
    T q_[RB][DK], g_[RB][DV], acc[RB][DK], l_[RB], d_[RB];                                       \
    /* Arrays sized by DK, DV are declared outside the key loop: a VLA inside it would save and  \
     * restore the stack every iteration and block vectorisation. */                            \
    T kv[DK], vv[DV], dkj[DK], dvj[DV];                                                          \
    int64_t e_[RB];                                                                              \
    for (int r = 0; r < RB; ++r) {                                                               \
        for (int64_t a = 0; a < DK; ++a) { q_[r][a] = qr[r][a]; acc[r][a] = 0; }                 \
        for (int64_t a = 0; a < DV; ++a) g_[r][a] = gr[r][a];                                    \
        l_[r] = li[r]; d_[r] = di[r]; e_[r] = jend[r] - j0;                                      \
    }                                                                                            \
    for (int64_t j = 0; j < nb; ++j) {                                                           \
        T dbj = 0;                                                                               \
        for (int64_t a = 0; a < DK; ++a) { kv[a] = kl[a * ld + j]; dkj[a] = 0; }                 \
        for (int64_t a = 0; a < DV; ++a) { vv[a] = vl[a * ld + j]; dvj[a] = 0; }                 \
        const T bj = kb[j];                                                                      \
        /* Unrolled before vectorisation, else gcc sees acc[r][.] as a complicated access. */   \
        _Pragma("GCC unroll 8") for (int r = 0; r < RB; ++r) {                                   \
            T z = bj, dp = 0, e;                                                                 \
            for (int64_t a = 0; a < DK; ++a) z += q_[r][a] * kv[a];                              \
            for (int64_t a = 0; a < DV; ++a) dp += g_[r][a] * vv[a];                             \
            if (mode == 0) {                                                                     \
                e = EXPF(z - l_[r]);                                                             \
            } else {                                                                             \
                z = z > SIGCLAMP ? SIGCLAMP : (z < -SIGCLAMP ? -SIGCLAMP : z);                   \
                const T ex = EXPF(z > 0 ? -z : z);                                               \
                e = z > 0 ? (T)1 / ((T)1 + ex) : ex / ((T)1 + ex);                               \
            }                                                                                    \
            if (HIDE == 1) e = j < e_[r] ? e : (T)0;                                             \
            if (HIDE == 2) e = ((j < e_[r]) & (mrow[r][j0 + j] != 0)) ? e : (T)0;                \
            const T dsv = mode == 0 ? e * (dp - d_[r]) : e * ((T)1 - e) * dp;                    \
            for (int64_t a = 0; a < DK; ++a) {                                                   \
                acc[r][a] += dsv * kv[a];                                                        \
                dkj[a] += dsv * q_[r][a];                                                        \
            }                                                                                    \
            for (int64_t a = 0; a < DV; ++a) dvj[a] += e * g_[r][a];                             \
            dbj += dsv;                                                                          \
        }                                                                                        \
        for (int64_t a = 0; a < DK; ++a) ak[a * ld + j] += dkj[a];                               \
        for (int64_t a = 0; a < DV; ++a) av[a * ld + j] += dvj[a];                               \
        ab[j] += dbj;                                                                            \
    }                                                                                            \
    for (int r = 0; r < RB; ++r)                                                                 \
        for (int64_t a = 0; a < DK; ++a) dqa[r][a] = acc[r][a];                                  \
}                                                                                                \
                                                                                                 \
static inline __attribute__((always_inline)) void bwd_##SUF(                                     \
    const T *q, const T *kT, const T *vT, const T *kbias, const uint8_t *mask,                   \
    int64_t Nk, int64_t row_begin, int64_t row_end, int causal, const int mode, T sig_bias,      \
    const int64_t DK, const int64_t DV, const T *lse, const T *dout, const T *delta,              \
    T *dq, T *dkT, T *dvT, T *db) {                                                              \
    const int64_t ld = TKB + 64 / (int64_t)sizeof(T);                                            \
    T *buf = aligned_alloc(64, sizeof(T) * ld * (2 + 2 * DK + 2 * DV));                          \
    if (!buf) return;                                                                            \
    T *kb = buf, *kl = kb + ld, *vl = kl + DK * ld, *ak = vl + DV * ld, *av = ak + DK * ld;      \
    T *ab = av + DV * ld;                                                                        \
    const T base = mode ? sig_bias : (T)0;                                                       \
    const int64_t jmax = causal ? (row_end < Nk ? row_end : Nk) : Nk;                            \
    for (int64_t j0 = 0; j0 < jmax; j0 += TKB) {                                                 \
        const int64_t nb = jmax - j0 < TKB ? jmax - j0 : TKB;                                    \
        for (int64_t j = 0; j < nb; ++j) kb[j] = kbias[j0 + j] + base;                           \
        for (int64_t a = 0; a < DK; ++a)                                                         \
            for (int64_t j = 0; j < nb; ++j) kl[a * ld + j] = kT[a * Nk + j0 + j];               \
        for (int64_t a = 0; a < DV; ++a)                                                         \
            for (int64_t j = 0; j < nb; ++j) vl[a * ld + j] = vT[a * Nk + j0 + j];               \
        for (int64_t j = 0; j < (DK + DV + 1) * ld; ++j) ak[j] = 0;                              \
        /* Causal: rows before the block see none of its keys. */                               \
        const int64_t first = causal && j0 > row_begin ? j0 : row_begin;                         \
        for (int64_t i0 = first; i0 < row_end; i0 += RB) {                                       \
            const int64_t nr = row_end - i0 < RB ? row_end - i0 : RB;                            \
            T qr[RB][DK], gr[RB][DV], dqa[RB][DK], li[RB], di[RB];                               \
            int64_t jend[RB], jlast = 0;                                                         \
            const uint8_t *mrow[RB];                                                             \
            for (int r = 0; r < RB; ++r) {                                                       \
                const int live = r < nr;                                                         \
                const int64_t i = live ? i0 + r : i0;                                            \
                for (int64_t a = 0; a < DK; ++a) qr[r][a] = live ? q[i * DK + a] : (T)0;         \
                for (int64_t a = 0; a < DV; ++a) gr[r][a] = live ? dout[i * DV + a] : (T)0;      \
                li[r] = (live && mode == 0) ? lse[i] : (T)0;                                     \
                di[r] = (live && mode == 0) ? delta[i] : (T)0;                                   \
                const int64_t je = causal ? (i + 1 < Nk ? i + 1 : Nk) : Nk;                      \
                jend[r] = live ? je : 0;                                                         \
                jlast = jend[r] > jlast ? jend[r] : jlast;                                       \
                mrow[r] = mask ? mask + i * Nk : 0;                                              \
            }                                                                                    \
            const int64_t n = jlast - j0 < nb ? jlast - j0 : nb;                                 \
            if (mask)                                                                            \
                bwd_keys_##SUF(kb, kl, vl, ak, av, ab, ld, j0, n, 2, mrow, mode, DK, DV, qr, gr, \
                               li, di, jend, dqa);                                               \
            else if (j0 + n > jend[0] || nr < RB)                                                \
                bwd_keys_##SUF(kb, kl, vl, ak, av, ab, ld, j0, n, 1, mrow, mode, DK, DV, qr, gr, \
                               li, di, jend, dqa);                                               \
            else                                                                                 \
                bwd_keys_##SUF(kb, kl, vl, ak, av, ab, ld, j0, n, 0, mrow, mode, DK, DV, qr, gr, \
                               li, di, jend, dqa);                                               \
            for (int r = 0; r < nr; ++r)                                                         \
                for (int64_t a = 0; a < DK; ++a) dq[(i0 + r) * DK + a] += dqa[r][a];             \
        }                                                                                        \
        for (int64_t a = 0; a < DK; ++a)                                                         \
            for (int64_t j = 0; j < nb; ++j) dkT[a * Nk + j0 + j] += ak[a * ld + j];             \
        for (int64_t a = 0; a < DV; ++a)                                                         \
            for (int64_t j = 0; j < nb; ++j) dvT[a * Nk + j0 + j] += av[a * ld + j];             \
        for (int64_t j = 0; j < nb; ++j) db[j0 + j] += ab[j];                                    \
    }                                                                                            \
    free(buf);                                                                                   \
}

#define CALL_BWD(SUF, MODE, DKC, DVC)                                                            \
    bwd_##SUF(q, kT, vT, kbias, mask, Nk, row_begin, row_end, causal, MODE, sig_bias, DKC, DVC,  \
              lse, dout, delta, dq, dkT, dvT, db)

#define DISPATCH_BWD(SUF, MODE)                                                                  \
    if (dk == dv) {                                                                              \
        switch (dk) {                                                                            \
        case 1: CALL_BWD(SUF, MODE, 1, 1); return;                                               \
        case 2: CALL_BWD(SUF, MODE, 2, 2); return;                                               \
        case 3: CALL_BWD(SUF, MODE, 3, 3); return;                                               \
        case 4: CALL_BWD(SUF, MODE, 4, 4); return;                                               \
        case 8: CALL_BWD(SUF, MODE, 8, 8); return;                                               \
        case 16: CALL_BWD(SUF, MODE, 16, 16); return;                                            \
        default: break;                                                                          \
        }                                                                                        \
    }                                                                                            \
    CALL_BWD(SUF, MODE, dk, dv); return;

#define DEFINE_BWD_ENTRY(T, SUF)                                                                 \
void tokendyn_attend_bwd_##SUF(const T *q, const T *kT, const T *vT, const T *kbias,             \
                               const uint8_t *mask, int64_t Nk, int64_t dk, int64_t dv,          \
                               int64_t row_begin, int64_t row_end, int causal, int mode,         \
                               T sig_bias, const T *lse, const T *dout, const T *delta, T *dq,   \
                               T *dkT, T *dvT, T *db) {                                          \
    if (mode == 0) { DISPATCH_BWD(SUF, 0) }                                                      \
    DISPATCH_BWD(SUF, 1)                                                                         \
}

/* Backward over whole clouds b in [b_begin, b_end); dkT, dvT and db are per cloud (B, ., Nk). */
#define DEFINE_BWD_BATCHED(T, SUF)                                                               \
void tokendyn_attend_bwd_batch_##SUF(const T *q, const T *kT, const T *vT, const T *kbias,       \
                                     const uint8_t *mask, int64_t Nq, int64_t Nk, int64_t dk,    \
                                     int64_t dv, int64_t b_begin, int64_t b_end,                 \
                                     int64_t kbias_stride, int64_t mask_stride, int causal,      \
                                     int mode, T sig_bias, const T *lse, const T *dout,          \
                                     const T *delta, T *dq, T *dkT, T *dvT, T *db) {             \
    for (int64_t b = b_begin; b < b_end; ++b)                                                    \
        tokendyn_attend_bwd_##SUF(q + b * Nq * dk, kT + b * dk * Nk, vT + b * dv * Nk,           \
                                  kbias ? kbias + b * kbias_stride : 0,                          \
                                  mask ? mask + b * mask_stride : 0, Nk, dk, dv, 0, Nq, causal,  \
                                  mode, sig_bias, lse ? lse + b * Nq : 0, dout + b * Nq * dv,    \
                                  delta ? delta + b * Nq : 0, dq + b * Nq * dk,                  \
                                  dkT + b * dk * Nk, dvT + b * dv * Nk, db ? db + b * Nk : 0);   \
}

DEFINE_BWD(float, f32, exp_f32, 80.0f)
DEFINE_BWD(double, f64, exp_f64, 700.0)
DEFINE_BWD_ENTRY(float, f32)
DEFINE_BWD_ENTRY(double, f64)
DEFINE_BWD_BATCHED(float, f32)
DEFINE_BWD_BATCHED(double, f64)

/* The kernel's own exponential on an array, y_k = exp(x_k) (x_k <= 0), for the accuracy tests. */
#define DEFINE_EXP(T, SUF, EXPF)                                                                 \
void tokendyn_exp_##SUF(const T *x, T *y, int64_t n) {                                           \
    for (int64_t k = 0; k < n; ++k) y[k] = EXPF(x[k]);                                           \
}

/* Arithmetic ceiling of the forward's inner loop: `reps` sweeps of one query over one key block
 * of TK keys held in L1 (built here, values keeping s <= 0), each pair doing exactly what the
 * kernel must do at least, s = <q, k_j>, e = exp(s - m), l += e, acc += e v_j (2 DK + 2
 * flops and one vector exp), fused in one loop: no score buffer, no block maximum, no mask and
 * no memory beyond L1, so no call of tokendyn_attend_* can do its pairs faster on one core. The
 * dot product and the accumulators are reductions over the block, vectorised with the same
 * instruction set and the same EXPF as the kernel; successive sweeps are independent chains
 * (q moves by a tiny step, so nothing can be hoisted). Returns the number of pairs evaluated
 * (reps * TK; 0 if out of memory) and stores the sum of all accumulators in *sink (the caller
 * times the call; the value only keeps the work alive). */
#define DEFINE_CEILING(T, SUF, EXPF)                                                             \
static inline __attribute__((always_inline)) T ceiling_##SUF(int64_t reps, const int64_t DK,      \
                                                             T *kv) {                            \
    T *kl = kv, *vl = kv + DK * TK, q[DK], acc[DK], total = 0;                                   \
    for (int64_t a = 0; a < DK; ++a) {                                                           \
        q[a] = (T)1;                                                                             \
        for (int64_t j = 0; j < TK; ++j) {                                                       \
            kl[a * TK + j] = -(T)(j % 61) / (T)(61 * DK);                                        \
            vl[a * TK + j] = (T)((j + a) % 7) / (T)7;                                            \
        }                                                                                        \
    }                                                                                            \
    for (int64_t it = 0; it < reps; ++it) {                                                      \
        T l = 0;                                                                                 \
        for (int64_t a = 0; a < DK; ++a) acc[a] = 0;                                             \
        for (int64_t j = 0; j < TK; ++j) {                                                       \
            T z = 0;                                                                             \
            for (int64_t a = 0; a < DK; ++a) z += q[a] * kl[a * TK + j];                         \
            const T e = EXPF(z - (T)0.25);                                                       \
            l += e;                                                                              \
            for (int64_t a = 0; a < DK; ++a) acc[a] += e * vl[a * TK + j];                       \
        }                                                                                        \
        total += l;                                                                              \
        for (int64_t a = 0; a < DK; ++a) { total += acc[a]; q[a] += (T)1e-6; }                   \
    }                                                                                            \
    return total;                                                                                \
}                                                                                                \
                                                                                                 \
int64_t tokendyn_ceiling_##SUF(int64_t reps, int64_t dk, T *sink) {                              \
    T *kv = aligned_alloc(64, sizeof(T) * 2 * TK * (dk > 0 ? dk : 1));                           \
    if (!kv) return 0;                                                                           \
    T total;                                                                                     \
    switch (dk) {                                                                                \
    case 1: total = ceiling_##SUF(reps, 1, kv); break;                                           \
    case 2: total = ceiling_##SUF(reps, 2, kv); break;                                           \
    case 3: total = ceiling_##SUF(reps, 3, kv); break;                                           \
    case 4: total = ceiling_##SUF(reps, 4, kv); break;                                           \
    case 8: total = ceiling_##SUF(reps, 8, kv); break;                                           \
    case 16: total = ceiling_##SUF(reps, 16, kv); break;                                         \
    default: total = ceiling_##SUF(reps, dk, kv); break;                                         \
    }                                                                                            \
    free(kv);                                                                                    \
    *sink = total;                                                                               \
    return reps * TK;                                                                            \
}

DEFINE_EXP(float, f32, exp_f32)
DEFINE_EXP(double, f64, exp_f64)
DEFINE_CEILING(float, f32, exp_f32)
DEFINE_CEILING(double, f64, exp_f64)

int tokendyn_fused_abi(void) { return 5; }
int tokendyn_fused_max_dim(void) { return MAXD; }

/* ---------------------------------------------------------------------------------------------
 * Lean stepping driver (engine/stepper.py). For each cloud b in [b_begin, b_end) of a batch
 * x (B, N, d), stored contiguously and updated in place, take `steps` steps of size dt of
 *   dx_i/dt = F(x)_i = P_{x_i} sum_h W_h sum_j w^h_ij V_h x_j,
 *   w^h_ij = softmax_j(beta_bh <Q_h x_i, K_h x_j>)   (unnorm: exp(s_ij) / N instead)
 * (W_h NULL: identity; causal: j <= i) with
 *   method 0 euler: x <- x + dt F(x)
 *   method 1 heun:  x <- x + dt/2 (k1 + k2),  k1 = F(x), k2 = F(x + dt k1)
 *   method 2 rk4:   x <- x + dt/6 (k1 + 2 k2 + 2 k3 + k4)  (classical stages)
 * sphere: P_x v = v - <x^, v> x^ with x^ = x/|x|, and the retraction x <- x/|x| after each step;
 * Euclidean: no projection, no retraction. The operations and their order follow
 * engine/integrate.py, engine/space.py and attention/softmax.py. Each head's N x N reduction is
 * tokendyn_attend_* above (q = beta Q y, kT = K y, vT = V y in the caller's workspace).
 * mats holds 4 pointers per head (Q (k,d), K (k,d), V (m,d), W (d,m) or NULL), hdims (k, m) per
 * head, beta (H, B) (one beta per head and cloud). work: 3 N d + N (2 kmax + 2 mmax + 1) values,
 * reused for every cloud.
 * threads > 1 splits each cloud's tokens into that many row ranges, one per thread (the caller's
 * thread and threads - 1 started here, joined before returning): a thread computes q, kT, vT,
 * the attention rows, F, the stage updates and the retraction of its own tokens only, and the
 * threads meet at a barrier before a head's keys are written (every thread has finished reading
 * the previous ones) and after (every key is there), and once per step to agree on finiteness.
 * Every token's arithmetic is the same whatever the split, so the result is bitwise the same for
 * every thread count: ranges start on a multiple of R, so tokendyn_attend_* groups the rows as it
 * does for the whole cloud (a group's last key block, hence its summation order, depends on its
 * rows under the causal mask). Causal rows cost in proportion to i + 1, so their ranges split the
 * pairs evenly (boundaries near N sqrt(t / threads)).
 * Returns the number of threads that ran (fewer than asked when the cloud has fewer row groups, or
 * when no more threads could be started).
 * fail[b] = the first step (1..steps) after which cloud b holds a NaN or Inf (0: none); the cloud
 * is not advanced further. Finiteness is tested on the bits: the library is built with
 * -ffinite-math-only, under which isfinite() may be folded to true.
 * ------------------------------------------------------------------------------------------- */

/* A reusable barrier for the lean driver's threads (pthread_barrier_t is missing on macOS): the
 * last thread to arrive opens the next generation; the others spin briefly on it (a step's
 * halves are about as long on every thread), then sleep on the condition variable, so a thread
 * descheduled on a busy machine costs the others no CPU. */
#define LEAN_SPINS 4000
#define LEAN_MAX_THREADS 256
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int count, waiting, abandoned;
    unsigned generation;
} lean_barrier;

static void lean_barrier_wait(lean_barrier *b) {
    if (b == 0) return;
    pthread_mutex_lock(&b->lock);
    const unsigned generation = b->generation;
    if (++b->waiting == b->count) {
        b->waiting = 0;
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->lock);
        return;
    }
    pthread_mutex_unlock(&b->lock);
    for (int spin = 0; spin < LEAN_SPINS; ++spin) {
        if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != generation) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    pthread_mutex_lock(&b->lock);
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
}

/* One thread's share: tokens [i0, i1) of every cloud, its slot in the shared finiteness flags. */
typedef struct {
    lean_barrier *barrier;
    int64_t i0, i1;
    int slot, threads;
    int *flags;
} lean_part;

#define DEFINE_LEAN(T, SUF, UINT, EXPMASK, SQRT)                                                 \
static int nonfinite_##SUF(const T *p, int64_t n) {                                               \
    int bad = 0;                                                                                 \
    for (int64_t i = 0; i < n; ++i) {                                                            \
        UINT u;                                                                                  \
        __builtin_memcpy(&u, p + i, sizeof u);                                                   \
        bad |= (u & EXPMASK) == EXPMASK;                                                         \
    }                                                                                            \
    return bad;                                                                                  \
}                                                                                                \
                                                                                                 \
/* q = beta Q y, kT = K y, vT = V y for tokens [i0, i1); D, KQ, MV compile-time where dispatched. */ \
static inline __attribute__((always_inline)) void lean_qkv_##SUF(                                \
    const T *y, int64_t N, int64_t i0, int64_t i1, const int64_t D, const int64_t KQ,            \
    const int64_t MV, const T *Q, const T *K, const T *V, T bh, T *q, T *kT, T *vT) {            \
    for (int64_t i = i0; i < i1; ++i) {                                                          \
        const T *yi = y + i * D;                                                                 \
        for (int64_t c = 0; c < KQ; ++c) {                                                       \
            T sq = 0, sk = 0;                                                                    \
            for (int64_t a = 0; a < D; ++a) {                                                    \
                sq += Q[c * D + a] * yi[a];                                                      \
                sk += K[c * D + a] * yi[a];                                                      \
            }                                                                                    \
            q[i * KQ + c] = bh * sq;                                                             \
            kT[c * N + i] = sk;                                                                  \
        }                                                                                        \
        for (int64_t c = 0; c < MV; ++c) {                                                       \
            T sv = 0;                                                                            \
            for (int64_t a = 0; a < D; ++a) sv += V[c * D + a] * yi[a];                          \
            vT[c * N + i] = sv;                                                                  \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* Sphere: F_i <- F_i - <F_i, y^_i> y^_i, y^_i = y_i/|y_i| (space.py's tangent projection). */    \
static inline __attribute__((always_inline)) void lean_tangent_##SUF(                            \
    const T *y, int64_t i0, int64_t i1, const int64_t D, T *F) {                                 \
    for (int64_t i = i0; i < i1; ++i) {                                                          \
        const T *yi = y + i * D;                                                                 \
        T *Fi = F + i * D, n2 = 0, dot = 0;                                                      \
        for (int64_t a = 0; a < D; ++a) n2 += yi[a] * yi[a];                                     \
        const T nrm = SQRT(n2);                                                                  \
        for (int64_t a = 0; a < D; ++a) dot += Fi[a] * (yi[a] / nrm);                            \
        for (int64_t a = 0; a < D; ++a) Fi[a] -= dot * (yi[a] / nrm);                            \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* F = field(y) on the part's tokens. */                                                         \
static void lean_field_##SUF(const lean_part *part, const T *y, int64_t N, int64_t d, int64_t H, \
                             const T *const *mats, const int64_t *hdims, const T *beta,          \
                             int64_t bstride, int causal, int unnorm, int sphere, T *q, T *kT,   \
                             T *vT, T *o, T *lse, T *F) {                                        \
    const int64_t i0 = part->i0, i1 = part->i1;                                                  \
    for (int64_t i = i0 * d; i < i1 * d; ++i) F[i] = 0;                                          \
    const T log_n = (T)log((double)N);                                                           \
    for (int64_t h = 0; h < H; ++h) {                                                            \
        const T *Q = mats[4 * h], *K = mats[4 * h + 1], *V = mats[4 * h + 2];                    \
        const T *W = mats[4 * h + 3];                                                            \
        const int64_t k = hdims[2 * h], m = hdims[2 * h + 1];                                    \
        const T bh = beta[h * bstride];                                                          \
        lean_barrier_wait(part->barrier); /* nobody still reads the previous keys */              \
        if (d == 2 && k == 2 && m == 2)                                                          \
            lean_qkv_##SUF(y, N, i0, i1, 2, 2, 2, Q, K, V, bh, q, kT, vT);                       \
        else if (d == 3 && k == 3 && m == 3)                                                     \
            lean_qkv_##SUF(y, N, i0, i1, 3, 3, 3, Q, K, V, bh, q, kT, vT);                       \
        else if (d == 4 && k == 4 && m == 4)                                                     \
            lean_qkv_##SUF(y, N, i0, i1, 4, 4, 4, Q, K, V, bh, q, kT, vT);                       \
        else lean_qkv_##SUF(y, N, i0, i1, d, k, m, Q, K, V, bh, q, kT, vT);                      \
        lean_barrier_wait(part->barrier); /* every key and value is written */                    \
        if (i1 > i0)                                                                             \
            tokendyn_attend_##SUF(q, kT, vT, 0, 0, N, k, m, i0, i1, 0, causal, 0, 0, o,          \
                                  unnorm ? lse : 0);                                             \
        for (int64_t i = i0; i < i1; ++i) {                                                      \
            T *oi = o + i * m, *Fi = F + i * d;                                                  \
            if (unnorm) {                                                                        \
                const T z = (T)exp((double)(lse[i] - log_n));                                    \
                for (int64_t c = 0; c < m; ++c) oi[c] *= z;                                      \
            }                                                                                    \
            if (W) {                                                                             \
                for (int64_t a = 0; a < d; ++a) {                                                \
                    T s = 0;                                                                     \
                    for (int64_t c = 0; c < m; ++c) s += W[a * m + c] * oi[c];                   \
                    Fi[a] += s;                                                                  \
                }                                                                                \
            } else {                                                                             \
                for (int64_t a = 0; a < d; ++a) Fi[a] += oi[a];                                  \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    if (sphere) {                                                                                \
        if (d == 2) lean_tangent_##SUF(y, i0, i1, 2, F);                                         \
        else if (d == 3) lean_tangent_##SUF(y, i0, i1, 3, F);                                    \
        else if (d == 4) lean_tangent_##SUF(y, i0, i1, 4, F);                                    \
        else lean_tangent_##SUF(y, i0, i1, d, F);                                                \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
typedef struct {                                                                                 \
    lean_part part;                                                                              \
    T *x;                                                                                        \
    int64_t B, b_begin, b_end, N, d, H;                                                          \
    const T *const *mats;                                                                        \
    const int64_t *hdims;                                                                        \
    const T *beta;                                                                               \
    int causal, unnorm, sphere, method;                                                          \
    double dt;                                                                                   \
    int64_t steps;                                                                               \
    T *work;                                                                                     \
    int64_t *fail;                                                                               \
} lean_job_##SUF;                                                                                \
                                                                                                 \
static void *lean_run_##SUF(void *arg) {                                                          \
    const lean_job_##SUF *job = arg;                                                             \
    const lean_part *part = &job->part;                                                          \
    lean_barrier_wait(part->barrier); /* the start gate: every thread is running */              \
    if (part->barrier && part->barrier->abandoned) return 0;                                     \
    const int64_t N = job->N, d = job->d, H = job->H, B = job->B;                                \
    const T *const *mats = job->mats;                                                            \
    const int64_t *hdims = job->hdims;                                                           \
    const int causal = job->causal, unnorm = job->unnorm, sphere = job->sphere;                  \
    const int method = job->method;                                                              \
    int64_t kmax = 1, mmax = 1;                                                                  \
    for (int64_t h = 0; h < H; ++h) {                                                            \
        kmax = hdims[2 * h] > kmax ? hdims[2 * h] : kmax;                                        \
        mmax = hdims[2 * h + 1] > mmax ? hdims[2 * h + 1] : mmax;                                \
    }                                                                                            \
    const int64_t nd = N * d, r0 = part->i0 * d, r1 = part->i1 * d;                              \
    T *y = job->work, *F = y + nd, *acc = F + nd, *q = acc + nd, *kT = q + N * kmax;             \
    T *vT = kT + N * kmax, *o = vT + N * mmax, *lse = o + N * mmax;                              \
    const T h1 = (T)job->dt, h2 = (T)(0.5 * job->dt), h6 = (T)(job->dt / 6.0);                   \
    for (int64_t b = job->b_begin; b < job->b_end; ++b) {                                        \
        T *xb = job->x + b * nd;                                                                 \
        const T *bb = job->beta + b;                                                             \
        if (part->slot == 0) job->fail[b] = 0;                                                   \
        for (int64_t s = 1; s <= job->steps; ++s) {                                              \
            lean_field_##SUF(part, xb, N, d, H, mats, hdims, bb, B, causal, unnorm, sphere, q,  \
                             kT, vT, o, lse, F);                                                 \
            if (method == 0) {                                                                   \
                for (int64_t i = r0; i < r1; ++i) xb[i] = xb[i] + h1 * F[i];                     \
            } else if (method == 1) {                                                            \
                for (int64_t i = r0; i < r1; ++i) { acc[i] = F[i]; y[i] = xb[i] + h1 * F[i]; }   \
                lean_field_##SUF(part, y, N, d, H, mats, hdims, bb, B, causal, unnorm, sphere,  \
                                 q, kT, vT, o, lse, F);                                          \
                for (int64_t i = r0; i < r1; ++i) xb[i] = xb[i] + h2 * (acc[i] + F[i]);          \
            } else {                                                                             \
                for (int64_t i = r0; i < r1; ++i) { acc[i] = F[i]; y[i] = xb[i] + h2 * F[i]; }   \
                lean_field_##SUF(part, y, N, d, H, mats, hdims, bb, B, causal, unnorm, sphere,  \
                                 q, kT, vT, o, lse, F);                                          \
                for (int64_t i = r0; i < r1; ++i) { acc[i] += 2 * F[i]; y[i] = xb[i] + h2 * F[i]; } \
                lean_field_##SUF(part, y, N, d, H, mats, hdims, bb, B, causal, unnorm, sphere,  \
                                 q, kT, vT, o, lse, F);                                          \
                for (int64_t i = r0; i < r1; ++i) { acc[i] += 2 * F[i]; y[i] = xb[i] + h1 * F[i]; } \
                lean_field_##SUF(part, y, N, d, H, mats, hdims, bb, B, causal, unnorm, sphere,  \
                                 q, kT, vT, o, lse, F);                                          \
                for (int64_t i = r0; i < r1; ++i) xb[i] = xb[i] + h6 * (acc[i] + F[i]);          \
            }                                                                                    \
            if (sphere) {                                                                        \
                for (int64_t i = part->i0; i < part->i1; ++i) {                                  \
                    T *xi = xb + i * d, n2 = 0;                                                  \
                    for (int64_t a = 0; a < d; ++a) n2 += xi[a] * xi[a];                         \
                    const T nrm = SQRT(n2);                                                      \
                    for (int64_t a = 0; a < d; ++a) xi[a] = xi[a] / nrm;                         \
                }                                                                                \
            }                                                                                    \
            int bad = nonfinite_##SUF(xb + r0, r1 - r0);                                         \
            if (part->threads > 1) {                                                             \
                part->flags[part->slot] = bad;                                                   \
                lean_barrier_wait(part->barrier);                                                \
                bad = 0;                                                                         \
                for (int t = 0; t < part->threads; ++t) bad |= part->flags[t];                   \
            }                                                                                    \
            if (bad) {                                                                           \
                if (part->slot == 0) job->fail[b] = s;                                           \
                break;                                                                           \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int tokendyn_lean_steps_##SUF(T *x, int64_t B, int64_t b_begin, int64_t b_end, int64_t N,        \
                              int64_t d, int64_t H, const T *const *mats,                        \
                              const int64_t *hdims, const T *beta, int causal,                   \
                              int unnorm, int sphere, int method, double dt,                     \
                              int64_t steps, T *work, int64_t *fail, int threads) {              \
    threads = threads > LEAN_MAX_THREADS ? LEAN_MAX_THREADS : threads;                           \
    const int64_t groups = (N + R - 1) / R; /* ranges start on a multiple of R rows */           \
    threads = threads > groups ? (int)groups : threads;                                          \
    threads = threads < 1 ? 1 : threads;                                                         \
    lean_job_##SUF jobs[LEAN_MAX_THREADS];                                                       \
    pthread_t ids[LEAN_MAX_THREADS];                                                             \
    int flags[LEAN_MAX_THREADS];                                                                 \
    lean_barrier barrier = {.count = threads};                                                   \
    pthread_mutex_init(&barrier.lock, 0);                                                        \
    pthread_cond_init(&barrier.cond, 0);                                                         \
    int started = 1;                                                                             \
    for (;;) {                                                                                   \
        for (int t = 0; t < threads; ++t) {                                                      \
            const double lo = (double)t / threads, hi = (double)(t + 1) / threads;               \
            const int64_t g0 = (int64_t)(groups * (causal ? sqrt(lo) : lo));                     \
            const int64_t g1 = (int64_t)(groups * (causal ? sqrt(hi) : hi));                     \
            const int64_t i0 = t == 0 ? 0 : (g0 * R < N ? g0 * R : N);                           \
            const int64_t i1 = t == threads - 1 ? N : (g1 * R < N ? g1 * R : N);                 \
            jobs[t] = (lean_job_##SUF){{threads > 1 ? &barrier : 0, i0, i1, t, threads, flags},  \
                                       x, B, b_begin, b_end, N, d, H, mats, hdims, beta,         \
                                       causal, unnorm, sphere, method, dt, steps, work, fail};   \
        }                                                                                        \
        for (; started < threads; ++started)                                                     \
            if (pthread_create(&ids[started], 0, lean_run_##SUF, &jobs[started]) != 0) break;    \
        if (started == threads) break;                                                           \
        /* No more threads to be had: release those started (they see `abandoned` at the start   \
         * gate and return), and take every token on this thread. */                             \
        pthread_mutex_lock(&barrier.lock);                                                       \
        barrier.abandoned = 1;                                                                   \
        barrier.count = started;                                                                 \
        pthread_mutex_unlock(&barrier.lock);                                                     \
        lean_barrier_wait(&barrier);                                                             \
        for (int t = 1; t < started; ++t) pthread_join(ids[t], 0);                               \
        threads = started = 1;                                                                   \
    }                                                                                            \
    lean_run_##SUF(&jobs[0]);                                                                    \
    for (int t = 1; t < threads; ++t) pthread_join(ids[t], 0);                                   \
    pthread_cond_destroy(&barrier.cond);                                                         \
    pthread_mutex_destroy(&barrier.lock);                                                        \
    return threads;                                                                              \
}

DEFINE_LEAN(float, f32, uint32_t, 0x7f800000u, sqrtf)
DEFINE_LEAN(double, f64, uint64_t, 0x7ff0000000000000ull, sqrt)
