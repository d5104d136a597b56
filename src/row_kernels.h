/*
 * Per-ISA row kernels. row_kernels.c is compiled once per instruction set
 * (meson passes XENTC_ISA and the matching -m flags); each build defines one
 * rows function, one probability pass and one exp helper per dtype, named
 * *_<dtype>_<isa>, and the two target passes, *_<isa>.
 */
#ifndef XENTC_ROW_KERNELS_H
#define XENTC_ROW_KERNELS_H

#include "xentc.h"

/* Rows of up to this many classes take the batched short-row paths; when
   they are transformed (logit_scale != 1 or a softcap), z and dz/dx go
   through a scratch buffer. */
#define XENTC_SCRATCH_C 64

/* Process rows [i0, i1) of a batch whose targets are already checked;
   `scratch` holds 2 * (i1 - i0) * n_classes values of the dtype for
   transformed rows of up to XENTC_SCRATCH_C classes, else may be NULL. */
typedef void (*xentc_rows_fn)(const xentc_rows *rows, int64_t i0, int64_t i1, void *scratch);
typedef void (*xentc_exp_fn)(const void *in, void *out, int64_t n);
typedef void (*xentc_widen16_fn)(const void *in, float *out, int64_t n, int bf16);
typedef void (*xentc_narrow16_fn)(const float *in, void *out, int64_t n, int bf16);
/* Rows [i0, i1) of a probability array (targets checked); ext = {min, max, nan}. */
typedef void (*xentc_proba_fn)(const xentc_proba *proba, int64_t i0, int64_t i1, double ext[3]);

/* The first i in [i0, i1) with target[i] outside [0, n_classes) and not
   `ignore`, or -1; and the sum of weight[target[i]] (1 without weight) over
   targets other than `ignore`, all targets being valid. */
typedef int64_t (*xentc_bad_target_fn)(const int64_t *target, int64_t i0, int64_t i1,
                                       int64_t n_classes, int64_t ignore);
typedef double (*xentc_target_total_fn)(const int64_t *target, int64_t n, int64_t ignore,
                                        const double *weight);

/* 16-bit rows (half_rows.c) widen rows [i0, i1) into `scratch`: (i1 - i0) *
   n_classes float32 values for x, as many again for soft targets, then the
   float32 rows' own scratch (above) when they need one. */
#define XENTC_DECLARE_ISA(isa)                                                 \
    void xentc_rows_f32_##isa(const xentc_rows *rows, int64_t i0, int64_t i1, void *scratch); \
    void xentc_rows_f64_##isa(const xentc_rows *rows, int64_t i0, int64_t i1, void *scratch); \
    void xentc_rows_f16_##isa(const xentc_rows *rows, int64_t i0, int64_t i1, void *scratch); \
    void xentc_rows_bf16_##isa(const xentc_rows *rows, int64_t i0, int64_t i1, void *scratch); \
    void xentc_long_row16_f32_##isa(const xentc_rows *rows, int64_t i, const void *x16, int bf16); \
    void xentc_exp_f32_##isa(const void *in, void *out, int64_t n);            \
    void xentc_widen16_##isa(const void *in, float *out, int64_t n, int bf16); \
    void xentc_narrow16_##isa(const float *in, void *out, int64_t n, int bf16); \
    void xentc_exp_f64_##isa(const void *in, void *out, int64_t n);            \
    void xentc_proba_f32_##isa(const xentc_proba *proba, int64_t i0, int64_t i1, \
                               double ext[3]);                                 \
    void xentc_proba_f64_##isa(const xentc_proba *proba, int64_t i0, int64_t i1, \
                               double ext[3]);                                 \
    int64_t xentc_bad_target_##isa(const int64_t *target, int64_t i0, int64_t i1, \
                                   int64_t n_classes, int64_t ignore);         \
    double xentc_target_total_##isa(const int64_t *target, int64_t n, int64_t ignore, \
                                    const double *weight);

XENTC_DECLARE_ISA(baseline)
XENTC_DECLARE_ISA(avx2)
XENTC_DECLARE_ISA(avx512)

#endif
