/*
 * Row kernels for one instruction set, both dtypes.
 *
 * Written with GCC/Clang vector extensions rather than intrinsics: the same
 * source becomes SSE2/NEON (16-byte vectors), AVX2+FMA (32) or AVX-512 (64)
 * depending on the flags this file is compiled with, so there is one kernel to
 * read and test. The dtype-specific constants are set here and the kernel body
 * is instantiated from row_kernel_template.h (PyWavelets' templating pattern).
 */
#include <math.h>
#include <string.h>

#include "half_convert.h"
#include "row_kernels.h"

#ifndef XENTC_ISA
#error "compile with -DXENTC_ISA=<name> -DXENTC_VBYTES=<vector bytes>"
#endif

#if defined(__SSE2__) || defined(__AVX__)
#include <immintrin.h>
#endif

/* XENTC_OPAQUE(v): v is computed here, rounded, whatever follows (no
   multiply-add fuses across it); an empty asm on the vector's register. */
#if defined(__AVX512F__)
#define XENTC_OPAQUE(v) __asm__("" : "+v"(v))
#elif defined(__SSE2__)
#define XENTC_OPAQUE(v) __asm__("" : "+x"(v))
#elif defined(__aarch64__)
#define XENTC_OPAQUE(v) __asm__("" : "+w"(v))
#else /* no vector multiply-add to fuse into */
#define XENTC_OPAQUE(v) ((void)0)
#endif

/* The running sums of a row (row_kernel_template.h: block_sums, finish),
   against its running max m. */
typedef struct {
    double rest; /* sum of exp(z - m) over the terms that are not exactly 1 */
    double lin;  /* sum of coef * (z - m): the linear terms of the loss */
    double coef; /* sum of coef */
    double ones; /* count of the terms exactly 1: z == m */
} xentc_sums;

/* The row transforms (row_kernel_template.h: zd), as a constant argument
   of the hot loops, each compiled without the others' tests: none, a scale
   alone, a softcap, a softcap small enough that z - m >= -2 softcap never
   underflows the exp (no clamp). */
enum { Z_NONE, Z_SCALE, Z_CAP, Z_CAP_NEAR };

/* vexp_n's handling of arguments below EXP_LO: clamped, clamped with the
   exps that underflow flushed to 0, or none (the caller knows d >= EXP_LO). */
enum { EXP_CLAMP, EXP_FLUSH, EXP_INRANGE };

/* 1/j!: the float64 exp polynomial below. */
static const double xentc_inv_factorial[14] = {
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
    1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
    1.0 / 479001600, 1.0 / 6227020800.0};

#define XENTC_CAT3_(a, b, c) a##_##b##_##c
#define XENTC_CAT3(a, b, c) XENTC_CAT3_(a, b, c)
/* xentc_row_f32_avx2 etc. */
#define XENTC_FN(name) XENTC_CAT3(name, XENTC_SFX, XENTC_ISA)

/*
 * log1p of n doubles >= 0 (NaN propagates), vectorized, for the per-row
 * sums of the short-row path where a libm call per row would cost as much as
 * the row. With x = 1 + y rounded, log1p(y) = log(x) + (y - (x - 1)) / x
 * (Goldberg's correction), and x = 2^k * f with f in [sqrt(1/2), sqrt(2)), and
 * log f = 2 atanh(u), u = (f - 1) / (f + 1), |u| <= 0.1716: the series to
 * u^top leaves u^(top+1) / (top+2) relative error, < 4e-18 for top = 21
 * (float64 rows: a few units in the last place after rounding, measured
 * through the loss by the tests) and < 1.3e-12 for top = 13 (float32 rows,
 * whose results are rounded to 6e-8).
 */
typedef double xentc_vd __attribute__((vector_size(XENTC_VBYTES)));
typedef int64_t xentc_vdi __attribute__((vector_size(XENTC_VBYTES)));
#define XENTC_NLD ((int64_t)(XENTC_VBYTES / sizeof(double)))

static inline __attribute__((always_inline)) void xentc_log1p_array(const double *in,
                                                                    double *out, int64_t n,
                                                                    int top)
{
    for (int64_t j = 0; j < n; j += XENTC_NLD) {
        const int64_t len = n - j < XENTC_NLD ? n - j : XENTC_NLD;
        xentc_vd y = {0};
        if (len == XENTC_NLD)
            memcpy(&y, in + j, sizeof y);
        else
            for (int64_t k = 0; k < len; k++)
                y[k] = in[j + k];
        const xentc_vd x = 1.0 + y, corr = (y - (x - 1.0)) / x;
        xentc_vdi bits = (xentc_vdi)x;
        xentc_vdi k2 = ((bits >> 52) & 0x7ff) - 1023;
        xentc_vd f = (xentc_vd)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
        xentc_vdi big = f > 1.4142135623730951;
        f = (xentc_vd)(((xentc_vdi)(f * 0.5) & big) | ((xentc_vdi)f & ~big));
        k2 -= big; /* big is -1 where true */
        xentc_vd u = (f - 1.0) / (f + 1.0), u2 = u * u;
        xentc_vd p = {0};
        p += 1.0 / top;
        for (int t = top - 2; t >= 1; t -= 2)
            p = p * u2 + 1.0 / t;
        /* (double)k2 without an int64 conversion instruction (none before
           AVX-512DQ): |k2| < 2^51 sits in the mantissa of 1.5 * 2^52. */
        const xentc_vd kd = (xentc_vd)(k2 + 0x4338000000000000LL) - 6755399441055744.0;
        xentc_vd res = kd * 0.6931471805599453094 + 2.0 * u * p + corr;
        const xentc_vdi num = x == x;
        res = (xentc_vd)((num & (xentc_vdi)res) | (~num & (xentc_vdi)x));
        if (len == XENTC_NLD)
            memcpy(out + j, &res, sizeof res);
        else
            for (int64_t k = 0; k < len; k++)
                out[j + k] = res[k];
    }
}

#define XENTC_ISA_FN(name) XENTC_CAT(name, XENTC_ISA)
#define XENTC_CAT_(a, b) a##_##b
#define XENTC_CAT(a, b) XENTC_CAT_(a, b)

/* Targets are checked per block with a branch-free OR, which the compiler
   vectorizes with this file's ISA (64-bit compares need SSE4.2 or AVX2);
   only a block that fails is searched target by target. */
int64_t XENTC_ISA_FN(xentc_bad_target)(const int64_t *target, int64_t i0, int64_t i1,
                                       int64_t n_classes, int64_t ignore)
{
    const uint64_t C = (uint64_t)n_classes; /* negatives wrap to >= C */
    for (int64_t b = i0; b < i1; b += 4096) {
        const int64_t e = i1 - b < 4096 ? i1 : b + 4096;
        int64_t any = 0;
        for (int64_t i = b; i < e; i++)
            any |= ((uint64_t)target[i] >= C) & (target[i] != ignore);
        if (any)
            for (int64_t i = b; i < e; i++)
                if ((uint64_t)target[i] >= C && target[i] != ignore)
                    return i;
    }
    return -1;
}

double XENTC_ISA_FN(xentc_target_total)(const int64_t *target, int64_t n, int64_t ignore,
                                        const double *weight)
{
    if (!weight) { /* a count: vectorized and exact */
        int64_t kept = 0;
        for (int64_t i = 0; i < n; i++)
            kept += target[i] != ignore;
        return (double)kept;
    }
    /* Four running sums: one would wait on the add's latency per target. */
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int u = 0; u < 4; u++)
            s[u] += target[i + u] != ignore ? weight[target[i + u]] : 0.0;
    for (; i < n; i++)
        s[0] += target[i] != ignore ? weight[target[i]] : 0.0;
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/*
 * float32: exp(r) on |r| <= ln2/2 by a degree-6 polynomial 1 + r + r^2 q(r),
 * q fitted for minimax relative error (Lawson's iteration on Chebyshev
 * nodes): 3.1e-9 (0.03 ulp) before rounding; evaluated by Horner with FMA it
 * is within 0.71 ulp on the reduced range, and the exp within 2 ulp of float64
 * over the whole range (measured by the test suite). ln2 is split Cody-Waite
 * style (Cephes' constants) so r is exact. Sums accumulate in float32
 * vectors over a 4 KiB block, then in double.
 */
static const double xentc_exp_coef_f32[7] = {
    1.0, 1.0, 0x1.fffffcp-2, 0x1.555492p-3, 0x1.5558f2p-5, 0x1.1239eap-7, 0x1.6a2436p-10};

#if XENTC_VBYTES == 64 && defined(__AVX512F__)
/* The AVX-512 float32 exp: 2^(j/16), j = 0..15, rounded to float (one
   register), and 2^r = 1 + r P(r) on |r| <= 1/32, Taylor's terms in r ln2:
   truncation (r ln2)^4 / 24 <= 9.2e-9, 0.15 ulp. */
static const float xentc_exp2_sixteenths[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f,
    0x1.306fe0p+0f, 0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f,
    0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
static const double xentc_exp2_cubic[4] = {
    1.0, 0.69314718055994530942, 0.24022650695910071233, 0.05550410866482157995};
#endif

/*
 * float32 tanh(a) = a P(a^2) / Q(a^2) on [0, 9], P(0) = Q(0) = 1: a rational
 * fit for minimax relative error (Loeb's linearized least squares with
 * Lawson's reweighting), 1.03 ulp before rounding and within 7 ulp of
 * float64 as evaluated in float32; from 9 on, tanh rounds to 1. Cheaper
 * than the exp-based form float64 keeps (row_kernel_template.h: zv), which
 * matters where the softcap's tanh costs as much as the row's own exp.
 */
static const float xentc_tanh_p_f32[6] = {
    1.0f, 0x1.08a720p-3f, 0x1.7f45a6p-9f, 0x1.37e70ap-17f, -0x1.b9aa7cp-27f, 0x1.44066ap-36f};
static const float xentc_tanh_q_f32[4] = {1.0f, 0x1.d9a8d0p-2f, 0x1.85917ep-6f, 0x1.df4c70p-13f};

#define TYPE float
#define ITYPE int32_t
#define XENTC_SFX f32
#define TANH_P xentc_tanh_p_f32
#define TANH_NP 6
#define TANH_Q xentc_tanh_q_f32
#define TANH_NQ 4
#define TANH_SAT 9.0f
#define LOG1P_TOP 13
#define EXP_DEGREE 6
#define EXP_COEF xentc_exp_coef_f32
#define EXP_LO (-87.0f)         /* exp(-87) is still a normal float */
#define EXP_SHIFT 12582912.0f   /* 1.5 * 2^23: adding it rounds to an integer */
#define EXP_MANT 23
#define EXP_BIAS 127
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#if XENTC_VBYTES == 64 && defined(__AVX512F__)
#define XENTC_VMAX(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#elif XENTC_VBYTES == 32 && defined(__AVX__)
#define XENTC_VMAX(a, b) _mm256_max_ps((__m256)(a), (__m256)(b))
#elif XENTC_VBYTES == 16 && defined(__SSE2__)
#define XENTC_VMAX(a, b) _mm_max_ps((__m128)(a), (__m128)(b))
#endif
#define XENTC_HALF_ROWS /* float32 rows also widen 16-bit long rows */
#if XENTC_VBYTES == 64 && defined(__AVX512F__) /* vexp_n's table exp */
#define EXP_TABLE xentc_exp2_sixteenths
#define EXP_TABLE_P xentc_exp2_cubic
#define NARROW_TRANSPOSE /* narrow rows' columns by a 16 x 16 transpose */
#endif
#include "row_kernel_template.h"
#undef XENTC_HALF_ROWS
#undef EXP_TABLE
#undef EXP_TABLE_P
#undef NARROW_TRANSPOSE
#undef TYPE
#undef ITYPE
#undef XENTC_SFX
#undef TANH_P
#undef TANH_NP
#undef TANH_Q
#undef TANH_NQ
#undef TANH_SAT
#undef LOG1P_TOP
#undef EXP_DEGREE
#undef EXP_COEF
#undef XENTC_VMAX
#undef EXP_LO
#undef EXP_SHIFT
#undef EXP_MANT
#undef EXP_BIAS
#undef LN2_HI
#undef LN2_LO

/*
 * float64: degree-13 Taylor polynomial, truncation r^14/14! <= 4.2e-18
 * (0.04 ulp); ln2 split as in fdlibm's exp.
 */
#define TYPE double
#define ITYPE int64_t
#define XENTC_SFX f64
#define LOG1P_TOP 21
#define EXP_DEGREE 13
#define EXP_COEF xentc_inv_factorial
#define EXP_LO (-708.0)          /* exp(-708) is still a normal double */
#define EXP_SHIFT 6755399441055744.0 /* 1.5 * 2^52 */
#define EXP_MANT 52
#define EXP_BIAS 1023
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#if XENTC_VBYTES == 64 && defined(__AVX512F__)
#define XENTC_VMAX(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
#elif XENTC_VBYTES == 32 && defined(__AVX__)
#define XENTC_VMAX(a, b) _mm256_max_pd((__m256d)(a), (__m256d)(b))
#elif XENTC_VBYTES == 16 && defined(__SSE2__)
#define XENTC_VMAX(a, b) _mm_max_pd((__m128d)(a), (__m128d)(b))
#endif
#include "row_kernel_template.h"
