/*
 * float16 and bfloat16 to and from float32, for one instruction set: exact
 * widening, narrowing rounded to nearest even. Shared by half_rows.c (rows
 * widened a chunk at a time) and row_kernels.c (long rows widened a block at
 * a time as they stream in). F16C or AVX-512 where the build has them; on
 * aarch64, NEON's float16 conversions (ARMv8's base, rounding as FPCR says:
 * to nearest even unless a caller changed it).
 *
 * The 16-bit arrays may sit at any byte address: every access is a memcpy
 * or an unaligned vector load, never a typed uint16_t dereference.
 */
#ifndef XENTC_HALF_CONVERT_H
#define XENTC_HALF_CONVERT_H

#include <stdint.h>
#include <string.h>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

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
typedef int32_t i32x8 __attribute__((vector_size(32)));

static inline void widen(const char *src, float *dst, int64_t n, int bf16)
{
    int64_t j = 0;
    if (bf16) { /* zero-extend to 32 bits, shift into the top half */
#if defined(__AVX512F__)
        for (; j + 16 <= n; j += 16) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(src + 2 * j));
            _mm512_storeu_si512(dst + j, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
#elif defined(__AVX2__)
        for (; j + 8 <= n; j += 8) {
            const __m128i h = _mm_loadu_si128((const __m128i *)(src + 2 * j));
            _mm256_storeu_si256((__m256i *)(dst + j), _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
#else
        for (; j + 8 <= n; j += 8) { /* GCC leaves the scalar loop scalar */
            u16x8 h;
            memcpy(&h, src + 2 * j, sizeof h);
            const u32x8 u = __builtin_convertvector(h, u32x8) << 16;
            memcpy(dst + j, &u, sizeof u);
        }
#endif
        for (; j < n; j++)
            dst[j] = bf16_f32(load16(src + 2 * j));
        return;
    }
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * j))));
#endif
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * j))));
#elif defined(__aarch64__)
    for (; j + 8 <= n; j += 8) {
        float16x8_t h;
        memcpy(&h, src + 2 * j, sizeof h);
        vst1q_f32(dst + j, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(dst + j + 4, vcvt_high_f32_f16(h));
    }
#endif
    for (; j < n; j++)
        dst[j] = f16_f32(load16(src + 2 * j));
}

/* n float32 values as 16-bit ones into dst (any alignment), rounded to nearest even. */
static inline void narrow(const float *src, char *dst, int64_t n, int bf16)
{
    int64_t j = 0;
    if (bf16) { /* f32_bf16 on 8 lanes at a time */
        for (; j + 8 <= n; j += 8) {
            u32x8 u;
            memcpy(&u, src + j, sizeof u);
            const i32x8 nan = (i32x8)(u & 0x7fffffffu) > 0x7f800000;
            const u32x8 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            const u32x8 h = ((u32x8)nan & ((u >> 16) | 0x40u)) | (~(u32x8)nan & rounded);
            const u16x8 v = __builtin_convertvector(h, u16x8);
            memcpy(dst + 2 * j, &v, sizeof v);
        }
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
#elif defined(__aarch64__)
    for (; j + 8 <= n; j += 8) {
        const float16x8_t h = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(src + j)),
                                                vld1q_f32(src + j + 4));
        memcpy(dst + 2 * j, &h, sizeof h);
    }
#endif
    for (; j < n; j++) {
        const uint16_t h = f32_f16(src[j]);
        memcpy(dst + 2 * j, &h, sizeof h);
    }
}

#endif
