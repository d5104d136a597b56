# The C API of src/xentc.h, declared once for Cython: _core.pyx sees these
# declarations by itself (a .pxd shares its module's name). xentc_rows
# mirrors xentc._engines.RowJob field for field.
from libc.stdint cimport int64_t


cdef extern from "xentc.h" nogil:
    ctypedef enum xentc_out_kind:
        XENTC_OUT_NONE, XENTC_OUT_LOG_SOFTMAX, XENTC_OUT_SOFTMAX, XENTC_OUT_GRAD

    ctypedef struct xentc_rows:
        int64_t n_rows
        int64_t n_classes
        const void *x
        int64_t x_stride
        const int64_t *target
        const void *soft
        int64_t soft_stride
        const void *weight
        int64_t ignore_index
        double label_smoothing
        double logit_scale
        double softcap
        double lse_square_scale
        void *loss
        void *lse
        int out_kind
        void *out
        int64_t out_stride
        double grad_scale
        const void *grad_row_scale

    int XENTC_OK, XENTC_ERR_TARGET, XENTC_ERR_ARG, XENTC_ERR_ISA, XENTC_ERR_MEMORY
    int xentc_rows_f32(const xentc_rows *rows, int n_threads, int64_t *bad_row)
    int xentc_rows_f64(const xentc_rows *rows, int n_threads, int64_t *bad_row)
    int xentc_rows_f16(const xentc_rows *rows, int n_threads, int64_t *bad_row)
    int xentc_rows_bf16(const xentc_rows *rows, int n_threads, int64_t *bad_row)
    ctypedef struct xentc_proba:
        int64_t n_rows
        int64_t n_classes
        const void *p
        int64_t p_stride
        const int64_t *target
        void *row_sum
        void *picked
        double lo
        double hi

    int xentc_proba_f32(xentc_proba *proba, int n_threads, int64_t *bad_row)
    int xentc_proba_f64(xentc_proba *proba, int n_threads, int64_t *bad_row)
    int xentc_targets(const int64_t *target, int64_t n, int64_t n_classes,
                      int64_t ignore_index, const double *weight, double *total,
                      int64_t *bad_row)
    int xentc_openmp_enabled()
    int xentc_default_threads()
    const char *xentc_compiled_isas()
    const char *xentc_isa()
    int xentc_set_isa(const char *name)
    void xentc_exp_f32(const float *inp, float *out, int64_t n)
    void xentc_exp_f64(const double *inp, double *out, int64_t n)
    void xentc_half_to_f32(const void *inp, float *out, int64_t n, int bf16)
    void xentc_f32_to_half(const float *inp, void *out, int64_t n, int bf16)
