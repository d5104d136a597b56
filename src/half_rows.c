/*
 * Rows of 16-bit logits (float16, bfloat16) for one instruction set.
 *
 * A chunk of rows (at most 64 KiB of float32, or one row: dispatch.c's
 * chunks) is widened into the calling thread's scratch, the float32 row
 * kernel of the same ISA runs on it (a second result in place, in the
 * scratch) and that result is narrowed back into `out`, rounded to nearest
 * even. So the half-precision rows take the float32 kernel whole, with its
 * float32 accuracy; the logits are read from memory once, as 16-bit values,
 * and the scratch stays in the core's cache. Compiled with the flags of
 * row_kernels.c (meson.build), plus F16C where the ISA has it.
 *
 * The 16-bit arrays may sit at any byte address: every access is a memcpy
 * or an unaligned vector load, never a typed uint16_t dereference.
 */
#include <string.h>

#include "row_kernels.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

#define XENTC_CAT_(a, b) a##_##b
#define XENTC_CAT(a, b) XENTC_CAT_(a, b)
#define XENTC_ISA_FN(name) XENTC_CAT(name, XENTC_ISA)

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline uint16_t load16(const char *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return h;
}

/* bfloat16 is the top half of a float32: widening is exact. */
static inline float bf16_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* float32 -> bfloat16, rounded to nearest even; NaN stays NaN (quiet). */
static inline uint16_t f32_bf16(float f)
{
    const uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* float16 -> float32, exact: subnormals through an exact integer product
   (no float32 subnormal on the way, which flush-to-zero modes would lose). */
static inline float f16_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    uint32_t u;
    if (em < 0x0400u) /* zero or subnormal: em * 2^-24 */
        u = f32_bits((float)em * 0x1p-24f);
    else if (em < 0x7c00u) /* normal: rebias the exponent by 127 - 15 */
        u = (em << 13) + (112u << 23);
    else /* inf, NaN (payload kept) */
        u = (em << 13) | 0x7f800000u;
    return bits_f32(u | sign);
}

/* float32 -> float16, rounded to nearest even (overflow to inf, NaN kept quiet). */
static inline uint16_t f32_f16(float f)
{
    uint32_t u = f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    uint16_t h;
    if (u >= 0x47800000u) { /* |f| >= 65536, inf or NaN */
        h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 0x38800000u) { /* below 2^-14: a subnormal or zero */
        /* adding 0.5 rounds the value at 2^-24 steps in the float unit,
           to nearest even: the low bits are then the subnormal's */
        const float magic = 0.5f;
        h = (uint16_t)(f32_bits(bits_f32(u) + magic) - f32_bits(magic));
    } else { /* normal (or rounding up to inf): rebias, round the 13 bits */
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u);
        h = (uint16_t)(u >> 13);
    }
    return (uint16_t)(h | sign);
}

/* n 16-bit values at src (any alignment) as float32 into dst. */
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

static void widen(const char *src, float *dst, int64_t n, int bf16)
{
    int64_t j = 0;
    if (bf16) { /* 8 at a time in vector registers (GCC leaves the scalar loop scalar) */
        for (; j + 8 <= n; j += 8) {
            u16x8 h;
            memcpy(&h, src + 2 * j, sizeof h);
            const u32x8 u = __builtin_convertvector(h, u32x8) << 16;
            memcpy(dst + j, &u, sizeof u);
        }
        for (; j < n; j++)
            dst[j] = bf16_f32(load16(src + 2 * j));
        return;
    }
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * j))));
#endif
    for (; j < n; j++)
        dst[j] = f16_f32(load16(src + 2 * j));
}

/* n float32 values as 16-bit ones into dst (any alignment), rounded to nearest even. */
static void narrow(const float *src, char *dst, int64_t n, int bf16)
{
    int64_t j = 0;
    if (bf16) {
        for (; j < n; j++) {
            const uint16_t h = f32_bf16(src[j]);
            memcpy(dst + 2 * j, &h, sizeof h);
        }
        return;
    }
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(dst + 2 * j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + j),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; j < n; j++) {
        const uint16_t h = f32_f16(src[j]);
        memcpy(dst + 2 * j, &h, sizeof h);
    }
}

/* Rows [i0, i1) of 16-bit x / soft / out (loss, lse, weight and
   grad_row_scale float32) through the float32 kernel, on `scratch`
   (row_kernels.h: XENTC_HALF_SCRATCH). */
static void half_rows(const xentc_rows *r, int64_t i0, int64_t i1, void *scratch, int bf16)
{
    const int64_t C = r->n_classes, n = i1 - i0;
    float *const xs = scratch, *const qs = xs + n * C;
    float *const ts = qs + (r->soft ? n * C : 0); /* the transformed short rows' */
    for (int64_t i = 0; i < n; i++) {
        widen((const char *)r->x + 2 * (i0 + i) * r->x_stride, xs + i * C, C, bf16);
        if (r->soft)
            widen((const char *)r->soft + 2 * (i0 + i) * r->soft_stride, qs + i * C, C, bf16);
    }
    xentc_rows sub = *r;
    sub.n_rows = n;
    sub.x = xs;
    sub.x_stride = C;
    sub.soft = r->soft ? qs : NULL;
    sub.soft_stride = C;
    sub.target = r->target ? r->target + i0 : NULL;
    sub.loss = r->loss ? (float *)r->loss + i0 : NULL;
    sub.lse = r->lse ? (float *)r->lse + i0 : NULL;
    sub.grad_row_scale = r->grad_row_scale ? (const float *)r->grad_row_scale + i0 : NULL;
    sub.out = r->out_kind != XENTC_OUT_NONE ? xs : NULL; /* in place, in the scratch */
    sub.out_stride = C;
    XENTC_ISA_FN(xentc_rows_f32)(&sub, 0, n, ts);
    if (r->out_kind != XENTC_OUT_NONE)
        for (int64_t i = 0; i < n; i++)
            narrow(xs + i * C, (char *)r->out + 2 * (i0 + i) * r->out_stride, C, bf16);
}

void XENTC_ISA_FN(xentc_widen16)(const void *in, float *out, int64_t n, int bf16)
{
    widen(in, out, n, bf16);
}

void XENTC_ISA_FN(xentc_narrow16)(const float *in, void *out, int64_t n, int bf16)
{
    narrow(in, out, n, bf16);
}

void XENTC_ISA_FN(xentc_rows_f16)(const xentc_rows *r, int64_t i0, int64_t i1, void *scratch)
{
    half_rows(r, i0, i1, scratch, 0);
}

void XENTC_ISA_FN(xentc_rows_bf16)(const xentc_rows *r, int64_t i0, int64_t i1, void *scratch)
{
    half_rows(r, i0, i1, scratch, 1);
}
