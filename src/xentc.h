/*
 * xentc C API: fused log-sum-exp / cross-entropy row kernels.
 *
 * The core knows nothing about Python. The caller describes a batch of rows
 * (classes contiguous within a row, any row stride) in one `xentc_rows`
 * struct and calls the entry point for its dtype. Each row is read from
 * memory once; an optional second pass over the same row (from cache) writes
 * log_softmax, softmax or the loss gradient.
 */
#ifndef XENTC_H
#define XENTC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    XENTC_OK = 0,
    XENTC_ERR_TARGET = 1, /* a target outside [0, n_classes) that is not ignore_index */
    XENTC_ERR_ARG = 2,    /* inconsistent arguments (caller bug) */
    XENTC_ERR_ISA = 3,    /* requested ISA not compiled in or not supported by this CPU */
    XENTC_ERR_MEMORY = 4  /* a work buffer could not be allocated */
} xentc_status;

/* What the second pass over a row writes into `out` (one value per logit). */
typedef enum {
    XENTC_OUT_NONE = 0,
    XENTC_OUT_LOG_SOFTMAX = 1,
    XENTC_OUT_SOFTMAX = 2,
    XENTC_OUT_GRAD = 3 /* d loss / d logits, scaled (see grad_scale) */
} xentc_out_kind;

/*
 * One batch of rows. Pointers to floating data all have the entry point's
 * dtype (but see the 16-bit entry points) and, like `target`, are aligned
 * to their type: they are dereferenced as float, double or int64_t.
 * Strides are in elements. Unused pointers are NULL; with n_rows == 0 any
 * of the per-row ones (x, target, soft, loss, lse, out, grad_row_scale) may
 * be NULL too.
 *
 * Each row is computed on z = softcap * tanh(logit_scale * x / softcap), or
 * z = logit_scale * x when softcap is 0; lse is the log-sum-exp of z. Row
 * loss (class targets y, smoothing e, weights w, C classes, zls =
 * lse_square_scale):
 *   (1 - e) * w[y] * (lse - z[y]) + (e / C) * sum_c w[c] * (lse - z[c])
 *   + zls * lse^2
 * and 0 where y == ignore_index (such a row's lse and `out` row are 0 too).
 * Soft targets q (one row per logit row):
 *   sum_c w[c] * ((1 - e) * q[c] + e / C) * (lse - z[c]) + zls * lse^2.
 * With neither target nor soft, only lse (and `out`) are produced.
 * log_softmax and softmax are of z; the gradient is with respect to x.
 */
typedef struct {
    int64_t n_rows;
    int64_t n_classes;
    const void *x;
    int64_t x_stride;
    const int64_t *target;
    const void *soft;
    int64_t soft_stride;
    const void *weight; /* n_classes values, NULL = all ones */
    int64_t ignore_index;
    double label_smoothing;
    double logit_scale;      /* > 0; 0 also means 1, so a zeroed struct is the plain loss */
    double softcap;          /* > 0, or 0 for none */
    double lse_square_scale; /* the z-loss's factor, >= 0 */
    void *loss; /* n_rows values or NULL */
    void *lse;  /* n_rows values or NULL */
    int out_kind;
    void *out; /* may alias x (in-place) when out_stride == x_stride */
    int64_t out_stride;
    /* XENTC_OUT_GRAD: row i's gradient is multiplied by
       grad_scale * (grad_row_scale ? grad_row_scale[i] : 1). */
    double grad_scale;
    const void *grad_row_scale;
} xentc_rows;

/* Run every row, spread over n_threads (<= 0: OpenMP's default). On
   XENTC_ERR_TARGET, *bad_row is set to one offending row and no row with a
   bad target has been read. */
int xentc_rows_f32(const xentc_rows *rows, int n_threads, int64_t *bad_row);
int xentc_rows_f64(const xentc_rows *rows, int n_threads, int64_t *bad_row);
/* 16-bit logits: x, soft and out hold IEEE float16 (f16) or bfloat16 (bf16)
   values at any address (copied by memcpy or unaligned loads); weight, loss,
   lse and grad_row_scale are float32. Rows are computed in float32 and `out`
   rounded to nearest even. */
int xentc_rows_f16(const xentc_rows *rows, int n_threads, int64_t *bad_row);
int xentc_rows_bf16(const xentc_rows *rows, int n_threads, int64_t *bad_row);

/* Probabilities, for log_loss: one pass over an (n_rows, n_classes) array of
   the dtype gives, per row, the sum and the entry at the target column, and
   over the whole array the extremes. */
typedef struct {
    int64_t n_rows;
    int64_t n_classes;
    const void *p;        /* row i at p + i * p_stride elements */
    int64_t p_stride;
    const int64_t *target; /* (n_rows,) columns to pick, or NULL */
    void *row_sum;        /* (n_rows,) out */
    void *picked;         /* (n_rows,) out, when target */
    double lo, hi;        /* out: min and max entry; NaN when any entry is NaN */
} xentc_proba;

int xentc_proba_f32(xentc_proba *proba, int n_threads, int64_t *bad_row);
int xentc_proba_f64(xentc_proba *proba, int n_threads, int64_t *bad_row);

/* Check n targets (each in [0, n_classes) or ignore_index) and set *total to
   the sum of weight[y] over the non-ignored ones (their count when weight is
   NULL): the denominator of the mean. One serial pass in row order, so the
   sum is the same for any thread count. On XENTC_ERR_TARGET *bad_row is set. */
int xentc_targets(const int64_t *target, int64_t n, int64_t n_classes, int64_t ignore_index,
                  const double *weight, double *total, int64_t *bad_row);

/* Build configuration and run-time dispatch. */
int xentc_openmp_enabled(void);
int xentc_default_threads(void);
const char *xentc_compiled_isas(void); /* comma-separated, lowest first */
const char *xentc_isa(void);           /* the ISA in use */
/* Use the named ISA ("baseline", "avx2", "avx512"); NULL or "" = the start-up
   choice: the best this CPU runs, lowered by the XENTC_ISA environment variable. */
int xentc_set_isa(const char *name);

/* The vectorized exp of the active ISA, for inputs <= 0 (testing aid). */
void xentc_exp_f32(const float *in, float *out, int64_t n);
void xentc_exp_f64(const double *in, double *out, int64_t n);
/* The 16-bit conversions of the active ISA (bf16: bfloat16, else float16):
   exact widening, narrowing rounded to nearest even (testing aid). */
void xentc_half_to_f32(const void *in, float *out, int64_t n, int bf16);
void xentc_f32_to_half(const float *in, void *out, int64_t n, int bf16);

#ifdef __cplusplus
}
#endif
#endif
