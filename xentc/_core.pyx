# cython: language_level=3
"""Thin adapter over the C core: typed memoryviews in, GIL released, status -> exception.

Only the CPU engine (``xentc._engines.cpu``) calls this module; it has already
validated arguments and arranged every array as the C API expects (rows with
contiguous classes, int64 targets, weights in the logits' dtype, data aligned
to its dtype except 16-bit rows). The C
declarations are in ``_core.pxd``.
"""
import numpy as np
from libc.stdint cimport int64_t, uint16_t
from cython cimport floating


# What rows of logits hold: float32, float64, or 16-bit floats (float16 or
# bfloat16, which NumPy reads as uint16: it has no bfloat16).
ctypedef fused stored:
    float
    double
    uint16_t


# RowJob.out_kind -> xentc_out_kind
_OUT_KINDS = {"none": XENTC_OUT_NONE, "log_softmax": XENTC_OUT_LOG_SOFTMAX,
              "softmax": XENTC_OUT_SOFTMAX, "grad": XENTC_OUT_GRAD}


cdef int64_t _row_stride(str name, Py_ssize_t[:] strides, Py_ssize_t itemsize,
                         int64_t c) except? -1:
    # One class is contiguous whatever its stride; its rows' stride still counts.
    if c > 1 and strides[1] != itemsize:
        raise ValueError(f"{name} must have contiguous classes")
    if strides[0] % itemsize:
        raise ValueError(f"{name} row stride is not a multiple of its itemsize")
    return strides[0] // itemsize


cdef const int64_t *_targets(const int64_t[::1] target, int64_t n) except? NULL:
    """Data of the length-n class targets; NULL for None or no rows."""
    if target is None:
        return NULL
    if target.shape[0] != n:
        raise ValueError(f"target must have length {n}, got {target.shape[0]}")
    return &target[0] if n > 0 else NULL


cdef const void *_vector(str name, const floating[::1] a, int64_t n) except? NULL:
    """Data of a length-n vector; NULL for None or no elements."""
    if a is None:
        return NULL
    if a.shape[0] != n:
        raise ValueError(f"{name} must have length {n}, got {a.shape[0]}")
    return &a[0] if n > 0 else NULL


cdef const void *_matrix(str name, const stored[:, :] a, int64_t n, int64_t c,
                         int64_t *stride) except? NULL:
    """Data and row stride of an (n, c) array with contiguous rows; NULL for None or empty."""
    if a is None:
        return NULL
    if a.shape[0] != n or a.shape[1] != c:
        raise ValueError(f"{name} must have shape ({n}, {c}), got ({a.shape[0]}, {a.shape[1]})")
    if n == 0 or c == 0:
        return NULL
    stride[0] = _row_stride(name, a.strides, sizeof(stored), c)
    return &a[0, 0]


def rows(job, half=None):
    """Run the fused row kernel over every row of ``job.x``; see ``xentc_rows`` in xentc.h.

    Parameters
    ----------
    job : xentc._engines.RowJob
        Of NumPy arrays laid out for the C API: float32 or float64 `x`
        (`soft`, `out` alike, `weight` and `grad_row_scale` in x's dtype),
        int64 `target`; `out` is required for a second result.
    half : {None, "float16", "bfloat16"}
        16-bit rows: `x`, `soft` and `out` are uint16 arrays holding the bits
        of such floats, `weight` and `grad_row_scale` are float32.

    Returns
    -------
    tuple
        ``(loss, lse)``: new (M,) arrays in x's dtype (float32 for 16-bit
        rows), None where not asked for; the second result is written into
        ``job.out``.

    Raises
    ------
    IndexError
        For a target outside ``[0, C)`` that is not ``job.ignore_index``.
    """
    x = job.x
    if half is not None:
        if half not in ("float16", "bfloat16"):
            raise ValueError(f"half must be 'float16' or 'bfloat16', got {half!r}")
        return _rows[uint16_t](job, x, half == "bfloat16")
    if x.dtype == np.float32:
        return _rows[float](job, x, False)
    return _rows[double](job, x, False)


cdef const void *_sums_vector(str name, a, int64_t n, bint single) except? NULL:
    """`_vector` of the dtype the sums run in: float32 (single) or float64."""
    return _vector[float](name, a, n) if single else _vector[double](name, a, n)


cdef tuple _rows(job, const stored[:, :] x, bint bf16):
    """`rows` for one storage: each field of `job` into its field of the C struct."""
    cdef xentc_rows r
    cdef int64_t n = x.shape[0], c = x.shape[1], bad = -1
    cdef int status
    cdef const int64_t[::1] target = job.target
    cdef const stored[:, :] soft = job.soft
    cdef stored[:, :] out = job.out
    cdef int n_threads = 0 if job.n_threads is None else job.n_threads
    cdef bint single = stored is not double
    dtype = np.float32 if single else np.float64
    loss = np.empty(n, dtype) if job.has_loss else None
    lse = np.empty(n, dtype) if job.want_lse else None
    r.n_rows = n
    r.n_classes = c
    r.x_stride = c
    r.soft_stride = 0
    r.out_stride = 0
    r.x = _matrix("input", x, n, c, &r.x_stride)
    r.target = _targets(target, n)
    r.soft = _matrix("target", soft, n, c, &r.soft_stride)
    r.weight = _sums_vector("weight", job.weight, c, single)
    r.ignore_index = job.ignore_index
    r.label_smoothing = job.label_smoothing
    r.logit_scale = job.logit_scale
    r.softcap = 0.0 if job.softcap is None else job.softcap
    r.lse_square_scale = job.lse_square_scale
    r.loss = <void *>_sums_vector("loss", loss, n, single)
    r.lse = <void *>_sums_vector("lse", lse, n, single)
    r.out_kind = _OUT_KINDS[job.out_kind]
    r.out = NULL
    if r.out_kind != XENTC_OUT_NONE:
        if out is None:
            raise ValueError("out is required for this out_kind")
        r.out = <void *>_matrix("out", out, n, c, &r.out_stride)
    r.grad_scale = job.grad_scale
    r.grad_row_scale = _sums_vector("grad_output", job.grad_row_scale, n, single)
    with nogil:
        if stored is float:
            status = xentc_rows_f32(&r, n_threads, &bad)
        elif stored is double:
            status = xentc_rows_f64(&r, n_threads, &bad)
        elif bf16:
            status = xentc_rows_bf16(&r, n_threads, &bad)
        else:
            status = xentc_rows_f16(&r, n_threads, &bad)
    _check(status, target, bad, c)
    return loss, lse


cdef int _check(int status, const int64_t[::1] target, int64_t bad, int64_t n_classes) except -1:
    """A C status as the exception the API promises."""
    if status == XENTC_ERR_TARGET:
        raise IndexError(f"`target` value {target[bad]} out of range for {n_classes} classes")
    if status == XENTC_ERR_MEMORY:
        raise MemoryError("xentc C core could not allocate its work buffer")
    if status != XENTC_OK:
        raise RuntimeError(f"xentc C core rejected its arguments (status {status})")
    return 0


def proba(const floating[:, :] p, const int64_t[::1] target, floating[::1] row_sum,
          floating[::1] picked, int n_threads=0):
    """One pass over probabilities `p`: row sums and picked entries written into
    `row_sum` / `picked` (when `target` is given); returns (min, max) of `p`,
    both NaN when `p` holds a NaN. See ``xentc_proba`` in xentc.h."""
    cdef xentc_proba r
    cdef int64_t n = p.shape[0], c = p.shape[1], bad = -1
    cdef int status
    r.n_rows = n
    r.n_classes = c
    r.p_stride = c
    r.p = _matrix("p", p, n, c, &r.p_stride)
    r.target = _targets(target, n)
    r.row_sum = <void *>_vector("row_sum", row_sum, n)
    r.picked = <void *>_vector("picked", picked, n) if target is not None else NULL
    with nogil:
        if floating is float:
            status = xentc_proba_f32(&r, n_threads, &bad)
        else:
            status = xentc_proba_f64(&r, n_threads, &bad)
    _check(status, target, bad, c)
    return r.lo, r.hi


def targets(const int64_t[::1] target, int64_t n_classes, int64_t ignore_index=-100,
            const double[::1] weight=None):
    """Check class targets and return the mean's denominator; see ``xentc_targets``.

    Raises IndexError for a target outside ``[0, C)`` that is not `ignore_index`.
    """
    cdef int64_t n = target.shape[0], bad = -1
    cdef double total = 0.0
    cdef const double *w = NULL
    cdef const int64_t *t = &target[0] if n > 0 else NULL
    cdef int status
    if weight is not None:
        if weight.shape[0] != n_classes:
            raise ValueError(f"weight must have length {n_classes}, got {weight.shape[0]}")
        w = &weight[0]
    with nogil:
        status = xentc_targets(t, n, n_classes, ignore_index, w, &total, &bad)
    _check(status, target, bad, n_classes)
    return total


def exp(const floating[::1] a):
    """Vectorized exp of the active ISA (inputs must be <= 0); returns a new array."""
    res = np.empty(a.shape[0], dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] out = res
    if a.shape[0] == 0:
        return res
    with nogil:
        if floating is float:
            xentc_exp_f32(&a[0], &out[0], a.shape[0])
        else:
            xentc_exp_f64(&a[0], &out[0], a.shape[0])
    return res


def half_to_f32(const uint16_t[::1] bits, bint bf16):
    """16-bit floats (their bits) widened to float32 by the active ISA's conversion."""
    res = np.empty(bits.shape[0], np.float32)
    cdef float[::1] out = res
    if bits.shape[0]:
        with nogil:
            xentc_half_to_f32(&bits[0], &out[0], bits.shape[0], bf16)
    return res


def f32_to_half(const float[::1] a, bint bf16):
    """float32 values narrowed to 16-bit floats (their bits, rounded to nearest even)
    by the active ISA's conversion."""
    res = np.empty(a.shape[0], np.uint16)
    cdef uint16_t[::1] out = res
    if a.shape[0]:
        with nogil:
            xentc_f32_to_half(&a[0], &out[0], a.shape[0], bf16)
    return res


def openmp_enabled():
    """Whether the C core was compiled with OpenMP."""
    return bool(xentc_openmp_enabled())


def default_threads():
    """Threads a call uses when n_threads is not given (OpenMP's current limit)."""
    return xentc_default_threads()


def compiled_isas():
    """Instruction sets the row kernel was compiled for, lowest first."""
    return xentc_compiled_isas().decode().split(",")


def get_isa():
    """The instruction set in use."""
    return xentc_isa().decode()


def set_isa(name=None):
    """Use the named ISA (one of compiled_isas() that this CPU runs); None = the
    import-time choice: the best this CPU runs, lowered by ``XENTC_ISA``."""
    cdef bytes b = b"" if name is None else str(name).encode()
    if xentc_set_isa(b) != XENTC_OK:
        raise ValueError(f"ISA {name!r} is not compiled in or not supported by this CPU "
                         f"(compiled: {', '.join(compiled_isas())})")
