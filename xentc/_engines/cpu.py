"""The CPU engine: hands CPU arrays of any library to the C core without copying them.

Arrays come in through DLPack (NumPy, torch, JAX, array-api-strict all speak
it), are adapted to the C API (classes contiguous, int64 targets, weight in
the logits' dtype) and results go back to the caller's namespace the same
way; the row maths is in ``src/``.
"""
import sys

import numpy as np
from array_api_compat import device as _device

from .. import _core, _dispatch
from . import is_numpy

name = "cpu"

# float32 elements per block of half-precision rows: the widened block is
# still in L2 cache when the kernel reads it.
_HALF_BLOCK = 1 << 17


_host = _dispatch.numpy_view  # a NumPy view of a CPU array, sharing its memory


def _back(xp, a):
    """`a` (NumPy) as an array of the caller's namespace, sharing memory where it can."""
    if a is None or is_numpy(xp):
        return a
    if xp.__name__ == "array_api_compat.torch":  # DLPack's view, in a fifth of its time
        return sys.modules["torch"].from_numpy(a)
    return xp.from_dlpack(a)


def _row_contiguous(a):
    """Whether `a` is 2-D with contiguous classes and whole-item row strides."""
    return (a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize)
            and a.strides[0] % a.itemsize == 0)


def _aligned(a):
    """`a`, or a copy of it where its data is not aligned to its dtype.

    The C core reads and writes float, double and int64_t through typed
    pointers: dereferencing a misaligned one is undefined behaviour (UBSan's
    "misaligned address"; a fault on strict-alignment CPUs). NumPy's ALIGNED
    flag tests the data pointer and strides against the C alignment of the
    dtype, which is what the C standard asks. np.ascontiguousarray returns a
    misaligned contiguous array unchanged: only a new allocation realigns it.
    16-bit rows need no copy: src/half_rows.c reads and writes them with
    memcpy and unaligned vector loads.
    """
    return a if a is None or a.flags.aligned else a.copy()


def _rows_layout(a):
    """`a` as a 2-D array whose rows have contiguous elements (copied only if not)."""
    return a if a is None or _row_contiguous(a) else np.ascontiguousarray(a)


def _vector(a):
    """The 1-D CPU array `a` as contiguous, aligned NumPy (its dtype is already the C API's)."""
    if a is None or (type(a) is np.ndarray and a.flags.c_contiguous and a.flags.aligned):
        return a  # the common case, fast
    return _aligned(np.ascontiguousarray(_host(a)))


def _targets_vector(t):
    """Class targets as contiguous int64 NumPy: what the C core reads (JAX's
    default index dtype is int32)."""
    t = _vector(t)
    return t if t is None or t.dtype == np.int64 else t.astype(np.int64)


def _half_kind(a):
    """"float16" or "bfloat16" for an array of those, else None."""
    name = str(a.dtype).rsplit(".", 1)[-1]
    return name if name in ("float16", "bfloat16") else None


def _bits(a):
    """The 16-bit floats of the CPU array `a` as a NumPy uint16 array sharing its
    memory (NumPy has no bfloat16), or None where its library gives no such view."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):  # float16, or ml_dtypes' bfloat16
        return a.view(np.uint16)
    library = type(a).__module__.split(".")[0]
    if library == "torch":
        import torch
        return _host(a.detach().resolve_neg().view(torch.int16)).view(np.uint16)
    if library in ("jax", "jaxlib"):  # immutable: a read-only view of its buffer
        return np.asarray(a).view(np.uint16)
    return None


def _half_result(xp, like):
    """A new array shaped and typed as the 16-bit `like` for the C core to write:
    (its uint16 NumPy view, a function returning it in the caller's namespace)."""
    if type(like).__module__.split(".")[0] in ("jax", "jaxlib"):  # immutable: filled, then cast
        import jax
        bits = np.empty(like.shape, np.uint16)
        return bits, lambda: jax.lax.bitcast_convert_type(jax.numpy.asarray(bits), like.dtype)
    res = xp.empty(like.shape, dtype=like.dtype, device=_device(like))
    return _bits(res), lambda: res


def rows(xp, job):
    """Per-row loss / lse / second result through the C core; see ``xentc._engines``."""
    if job.x.dtype in (xp.float32, xp.float64):
        half, hx = None, _host(job.x)
    else:
        half = _half_kind(job.x)
        hx = None if half is None else _bits(job.x)
        if hx is None:  # other floats, or a library without a bit view of its 16-bit ones
            loss, lse, res = _widened_rows(xp, job)
            return _back(xp, loss), _back(xp, lse), res
    view = _host if half is None else _bits
    out, hout, result = job.out, None, None
    if out is not None:
        if getattr(out, "is_neg", None) and (out.is_neg() or out.is_conj()):
            raise ValueError("`out` is a negative or conjugate view (torch's lazy sign bit): "
                             "its memory does not hold its values; pass a tensor that "
                             "does, e.g. out.resolve_neg()")
        hout = view(out)
    elif job.out_kind != "none":
        if half is None:
            hout = np.empty(hx.shape, hx.dtype)
            result = lambda: _back(xp, hout)  # noqa: E731
        else:
            hout, result = _half_result(xp, job.x)
    loss, lse = _host_rows(job, hx, view(job.soft), hout, half)
    res = None if job.out_kind == "none" else (out if out is not None else result())
    return _back(xp, loss), _back(xp, lse), res


def _host_rows(job, x, soft, out, half=None):
    """The C core on `job` with its (M, C) arrays given as NumPy `x`, `soft` and `out`
    (uint16 bits of 16-bit floats with `half`, see ``_core.rows``); writes `out` and
    returns (loss, lse) as NumPy arrays."""
    def layout(a):  # 16-bit rows may lie at any address (see `_aligned`), others not
        return _rows_layout(a) if half is not None else _aligned(_rows_layout(a))

    x = layout(x)
    dest = out
    if out is not None:
        if out.shape != x.shape or out.dtype != x.dtype or not out.flags.writeable:
            raise ValueError(f"`out` must be a writable {x.shape} array of dtype {x.dtype}, "
                             f"got {out.shape} {out.dtype}")
        # The kernel writes contiguous rows, through typed pointers for float32 / float64.
        if not _row_contiguous(out) or (half is None and not out.flags.aligned):
            dest = np.empty_like(x)
    # One job for the C struct: every array in its layout, the vectors as NumPy
    # (no copy for those that `targets` converted already).
    loss, lse = _core.rows(job.replace(
        x=x, target=_targets_vector(job.target), soft=layout(soft), weight=_vector(job.weight),
        grad_row_scale=_vector(job.grad_row_scale), out=dest), half)
    if dest is not out:
        out[...] = dest
    return loss, lse


def _widened_rows(xp, job):
    """Rows of floats the C core does not read (say float8; or float16 / bfloat16
    of a library that gives no bit view of them, see `_bits`): each block widened
    to float32 in the caller's namespace, run, and its second result narrowed back."""
    x = job.x
    n_rows, n_classes = x.shape
    loss = np.empty(n_rows, np.float32) if job.has_loss else None
    lse = np.empty(n_rows, np.float32) if job.want_lse else None
    res = job.out
    if job.out_kind != "none" and res is None:
        res = xp.empty(x.shape, dtype=x.dtype, device=_device(x))
    step = max(1, _HALF_BLOCK // n_classes)
    for start in range(0, n_rows, step):
        sl = slice(start, min(start + step, n_rows))
        block = job.block(sl)
        xb = _host(xp.astype(block.x, xp.float32))
        ob = None if res is None else np.empty_like(xb)
        lb, sb_lse = _host_rows(
            block, xb, None if block.soft is None else _host(xp.astype(block.soft, xp.float32)),
            ob)
        if loss is not None:
            loss[sl] = lb
        if lse is not None:
            lse[sl] = sb_lse
        if ob is not None:
            res[sl, :] = xp.astype(_back(xp, ob), x.dtype)
    return loss, lse, res


def targets(xp, job):
    """Check class targets and sum their weights in one C pass; see ``xentc._engines``."""
    job = job.replace(target=_targets_vector(job.target), weight=_vector(job.weight))
    # The C sum runs in double: float32 weights get an O(C) float64 copy for it
    # (the job keeps them as they are for the rows); float64 ones are used as is.
    w = None if job.weight is None else np.asarray(job.weight, dtype=np.float64)
    return job, _core.targets(job.target, job.x.shape[1], job.ignore_index, w)


def accepts(xp, device, explicit):
    """CPU arrays of any namespace (they reach the core through DLPack); not
    OpenCL buffers, even on a CPU device."""
    return "cpu" in device.lower() and not device.startswith("opencl:")


def proba_rows(xp, p, target=None, *, n_threads=None):
    """Extremes, row sums and target entries of probabilities in one C pass;
    see ``xentc._engines``."""
    if p.dtype not in (xp.float32, xp.float64):  # half precision: summed as stored
        from . import generic
        return generic.proba_rows(xp, p, target)
    hp = _aligned(_rows_layout(_host(p)))
    target = _targets_vector(target)
    total = np.empty(hp.shape[0], hp.dtype)
    picked = np.empty(hp.shape[0], hp.dtype) if target is not None else None
    lo, hi = _core.proba(hp, target, total, picked, 0 if n_threads is None else n_threads)
    return lo, hi, _back(xp, total), _back(xp, picked)
