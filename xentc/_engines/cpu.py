"""The CPU engine: hands CPU arrays of any library to the C core without copying them.

Arrays come in through DLPack (NumPy, torch, JAX, array-api-strict all speak
it), are adapted to the C API (classes contiguous, int64 targets, weight in
the logits' dtype) and results go back to the caller's namespace the same
way; the row maths is in ``src/``.
"""
import numpy as np
from array_api_compat import device as _device

from .. import _core

name = "cpu"

_OUT_KINDS = {"none": _core.OUT_NONE, "log_softmax": _core.OUT_LOG_SOFTMAX,
              "softmax": _core.OUT_SOFTMAX, "grad": _core.OUT_GRAD}

# float32 elements per block of half-precision rows: the widened block is
# still in L2 cache when the kernel reads it.
_HALF_BLOCK = 1 << 17


def _host(a):
    """A NumPy view of the CPU array `a`, sharing its memory."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if getattr(a, "requires_grad", False):  # torch refuses to export those; reading is safe
        a = a.detach()
    return np.from_dlpack(a)


def _back(xp, a):
    """`a` (NumPy) as an array of the caller's namespace, sharing memory where it can."""
    return a if a is None or xp.__name__.endswith("numpy") else xp.from_dlpack(a)


def _row_contiguous(a):
    """Whether `a` is 2-D with contiguous classes and whole-item row strides."""
    return (a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize)
            and a.strides[0] % a.itemsize == 0)


def _rows_layout(a):
    """`a` as a 2-D array whose rows have contiguous elements (copied only if not)."""
    return a if _row_contiguous(a) else np.ascontiguousarray(a)


def rows(xp, x, *, target=None, soft=None, weight=None, ignore_index=-100,
         label_smoothing=0.0, want_loss=True, want_lse=False, out_kind="none",
         grad_scale=1.0, grad_row_scale=None, out=None, n_threads=None):
    """Per-row loss / lse / second result through the C core; see ``xentc._engines``."""
    want_loss = want_loss and (target is not None or soft is not None)
    if target is not None:
        target = np.ascontiguousarray(_host(target), dtype=np.int64)
    kw = dict(weight=None if weight is None else np.ascontiguousarray(_host(weight)),
              ignore_index=ignore_index, label_smoothing=label_smoothing, out_kind=out_kind,
              grad_scale=grad_scale, n_threads=0 if n_threads is None else n_threads)
    if x.dtype in (xp.float32, xp.float64):
        hx = _host(x)
        hout = None if out is None else _host(out)
        if out_kind != "none" and out is None:
            hout = np.empty(hx.shape, hx.dtype)
        loss, lse = _host_rows(hx, target, _host(soft), _host(grad_row_scale), hout,
                               want_loss, want_lse, **kw)
        res = None if out_kind == "none" else (out if out is not None else _back(xp, hout))
    else:
        loss, lse, res = _half_rows(xp, x, target, soft, grad_row_scale, out, want_loss,
                                    want_lse, **kw)
    return _back(xp, loss), _back(xp, lse), res


def _host_rows(x, target, soft, grad_row_scale, out, want_loss, want_lse, *, weight,
               ignore_index, label_smoothing, out_kind, grad_scale, n_threads):
    """The C core on NumPy arrays; writes `out` and returns (loss, lse)."""
    x = _rows_layout(x)
    n_rows, dtype = x.shape[0], x.dtype
    if soft is not None:
        soft = _rows_layout(soft)
    if grad_row_scale is not None:
        grad_row_scale = np.ascontiguousarray(grad_row_scale, dtype=dtype)
    dest = out
    if out is not None:
        if out.shape != x.shape or out.dtype != dtype or not out.flags.writeable:
            raise ValueError(f"`out` must be a writable {x.shape} array of dtype {dtype}, "
                             f"got {out.shape} {out.dtype}")
        if not _row_contiguous(out):  # the kernel writes contiguous rows
            dest = np.empty_like(x)
    loss = np.empty(n_rows, dtype) if want_loss else None
    lse = np.empty(n_rows, dtype) if want_lse else None
    _core.rows(x, target, soft, weight, ignore_index, label_smoothing, loss, lse,
               _OUT_KINDS[out_kind], dest, grad_scale, grad_row_scale, n_threads)
    if dest is not out:
        out[...] = dest
    return loss, lse


def _half_rows(xp, x, target, soft, grad_row_scale, out, want_loss, want_lse, **kw):
    """float16 / bfloat16 rows: each block widened to float32 in the caller's
    namespace (NumPy has no bfloat16), run, and its second result narrowed back."""
    n_rows, n_classes = x.shape
    loss = np.empty(n_rows, np.float32) if want_loss else None
    lse = np.empty(n_rows, np.float32) if want_lse else None
    res = out
    if kw["out_kind"] != "none" and res is None:
        res = xp.empty(x.shape, dtype=x.dtype, device=_device(x))
    step = max(1, _HALF_BLOCK // n_classes)
    for start in range(0, n_rows, step):
        sl = slice(start, min(start + step, n_rows))
        xb = _host(xp.astype(x[sl, :], xp.float32))
        sb = None if soft is None else _host(xp.astype(soft[sl, :], xp.float32))
        ob = None if res is None else np.empty_like(xb)
        lb, sb_lse = _host_rows(
            xb, None if target is None else target[sl], sb,
            None if grad_row_scale is None else _host(grad_row_scale)[sl], ob,
            want_loss, want_lse, **kw)
        if loss is not None:
            loss[sl] = lb
        if lse is not None:
            lse[sl] = sb_lse
        if ob is not None:
            res[sl, :] = xp.astype(_back(xp, ob), x.dtype)
    return loss, lse, res


def targets(xp, target, n_classes, ignore_index, weight):
    """Check class targets and sum their weights in one C pass; see ``xentc._engines``."""
    w = None if weight is None else np.ascontiguousarray(_host(weight), dtype=np.float64)
    return _core.targets(np.ascontiguousarray(_host(target), dtype=np.int64), n_classes,
                         ignore_index, w)


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
    hp = _rows_layout(_host(p))
    if target is not None:
        target = np.ascontiguousarray(_host(target), dtype=np.int64)
    total = np.empty(hp.shape[0], hp.dtype)
    picked = np.empty(hp.shape[0], hp.dtype) if target is not None else None
    lo, hi = _core.proba(hp, target, total, picked, 0 if n_threads is None else n_threads)
    return lo, hi, _back(xp, total), _back(xp, picked)
