/*
 * Rows of 16-bit logits (float16, bfloat16) for one instruction set.
 *
 * Rows of up to XENTC_SCRATCH_C classes: a chunk of them (dispatch.c's
 * chunks, at most 64 KiB of float32) is widened into the calling thread's
 * scratch and the float32 row kernel of the same ISA runs on it. Longer
 * rows go one at a time to the kernel's long-row path, which widens each
 * block into one row of scratch as it streams in (xentc_long_row16). Either
 * way a second result is written in place, in the scratch, and narrowed
 * back into `out`, rounded to nearest even. So the half-precision rows take
 * the float32 kernel whole, with its float32 accuracy; the logits are read
 * from memory once, as 16-bit values, and the scratch stays in the core's
 * cache. Compiled with the flags of row_kernels.c (meson.build), plus F16C
 * where the ISA has it.
 *
 * The 16-bit arrays may sit at any byte address: every access is a memcpy
 * or an unaligned vector load, never a typed uint16_t dereference.
 */
#include "half_convert.h"
#include "row_kernels.h"

#define XENTC_CAT_(a, b) a##_##b
#define XENTC_CAT(a, b) XENTC_CAT_(a, b)
#define XENTC_ISA_FN(name) XENTC_CAT(name, XENTC_ISA)

/* n rows of C values between 16-bit rows `stride` apart at h (any
   alignment) and n * C contiguous floats at f: h widened into f, or with
   `back`, f narrowed into h. Contiguous rows are one run: a row of a few
   classes alone would be mostly a scalar tail. */
static void convert_rows(char *h, int64_t stride, float *f, int64_t n, int64_t C, int bf16,
                         int back)
{
    const int one_run = stride == C;
    const int64_t runs = one_run ? 1 : n, len = one_run ? n * C : C;
    for (int64_t i = 0; i < runs; i++) {
        if (back)
            narrow(f + i * C, h + 2 * i * stride, len, bf16);
        else
            widen(h + 2 * i * stride, f + i * C, len, bf16);
    }
}

/* Rows [i0, i1) of 16-bit x / soft / out (loss, lse, weight and
   grad_row_scale float32) through the float32 kernel, on `scratch`
   (row_kernels.h: XENTC_HALF_SCRATCH). */
static void half_rows(const xentc_rows *r, int64_t i0, int64_t i1, void *scratch, int bf16)
{
    const int64_t C = r->n_classes, n = i1 - i0;
    /* Long rows are widened by the kernel as they stream in, one row at a
       time in one row of scratch (strides 0); short ones here, the chunk at
       once, for the batched short-row paths. */
    const int long_rows = C > XENTC_SCRATCH_C;
    const int64_t held = long_rows ? 1 : n;
    float *const xs = scratch, *const qs = xs + held * C;
    float *const ts = qs + (r->soft ? held * C : 0); /* the transformed short rows' */
    const char *const x = (const char *)r->x + 2 * i0 * r->x_stride;
    const char *const q = r->soft ? (const char *)r->soft + 2 * i0 * r->soft_stride : NULL;
    xentc_rows sub = *r;
    sub.n_rows = n;
    sub.x = xs;
    sub.x_stride = long_rows ? 0 : C;
    sub.soft = r->soft ? qs : NULL;
    sub.soft_stride = sub.x_stride;
    sub.target = r->target ? r->target + i0 : NULL;
    sub.loss = r->loss ? (float *)r->loss + i0 : NULL;
    sub.lse = r->lse ? (float *)r->lse + i0 : NULL;
    sub.grad_row_scale = r->grad_row_scale ? (const float *)r->grad_row_scale + i0 : NULL;
    sub.out = r->out_kind != XENTC_OUT_NONE ? xs : NULL; /* in place, in the scratch */
    sub.out_stride = sub.x_stride;
    if (long_rows) {
        for (int64_t i = 0; i < n; i++) {
            if (q)
                widen(q + 2 * i * r->soft_stride, qs, C, bf16);
            XENTC_ISA_FN(xentc_long_row16_f32)(&sub, i, x + 2 * i * r->x_stride, bf16);
            if (sub.out)
                narrow(xs, (char *)r->out + 2 * (i0 + i) * r->out_stride, C, bf16);
        }
        return;
    }
    /* the 16-bit inputs are only read: convert_rows writes h only back */
    convert_rows((char *)x, r->x_stride, xs, n, C, bf16, 0);
    if (q)
        convert_rows((char *)q, r->soft_stride, qs, n, C, bf16, 0);
    XENTC_ISA_FN(xentc_rows_f32)(&sub, 0, n, ts);
    if (sub.out)
        convert_rows((char *)r->out + 2 * i0 * r->out_stride, r->out_stride, xs, n, C, bf16, 1);
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
