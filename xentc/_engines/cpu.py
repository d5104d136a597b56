"""The CPU engine: hands CPU arrays of any library to the C core without copying them.

Arrays come in through DLPack (NumPy, torch, JAX, array-api-strict all speak
it), are adapted to the C API (classes contiguous, int64 targets, weight in
the logits' dtype) and results go back to the caller's namespace the same
way; the row maths is in ``src/``.
"""
import numpy as np

from .. import _core

name = "cpu"

_OUT_KINDS = {"none": _core.OUT_NONE, "log_softmax": _core.OUT_LOG_SOFTMAX,
              "softmax": _core.OUT_SOFTMAX, "grad": _core.OUT_GRAD}


def _host(a):
    """A NumPy view of the CPU array `a`, sharing its memory."""
    return a if isinstance(a, np.ndarray) else np.from_dlpack(a)


def _back(xp, a):
    """`a` (NumPy) as an array of the caller's namespace, sharing memory where it can."""
    return a if a is None or xp.__name__.endswith("numpy") else xp.from_dlpack(a)


def _rows_layout(a):
    """`a` as a 2-D array whose rows have contiguous elements (copied only if not)."""
    if a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize) and a.strides[0] % a.itemsize == 0:
        return a
    return np.ascontiguousarray(a)


def rows(xp, x, *, target=None, soft=None, weight=None, ignore_index=-100,
         label_smoothing=0.0, want_loss=True, want_lse=False, out_kind="none",
         grad_scale=1.0, grad_row_scale=None, out=None, n_threads=None):
    """Per-row loss / lse / second result through the C core; see ``xentc._engines``."""
    hx = _rows_layout(_host(x))
    dtype = hx.dtype
    n_rows, n_classes = hx.shape
    if target is not None:
        target = np.ascontiguousarray(_host(target), dtype=np.int64)
    # The API layer has cast soft targets and weights to x's dtype already.
    if soft is not None:
        soft = _rows_layout(_host(soft))
    if weight is not None:
        weight = np.ascontiguousarray(_host(weight))
    if grad_row_scale is not None:
        grad_row_scale = np.ascontiguousarray(_host(grad_row_scale), dtype=dtype)
    loss = np.empty(n_rows, dtype) if want_loss and (target is not None or soft is not None) else None
    lse = np.empty(n_rows, dtype) if want_lse else None
    hout = None
    if out_kind != "none":
        hout = np.empty((n_rows, n_classes), dtype) if out is None else _host(out)
        if hout.shape != (n_rows, n_classes) or hout.dtype != dtype or not hout.flags.writeable:
            raise ValueError(f"`out` must be a writable ({n_rows}, {n_classes}) array of dtype "
                             f"{dtype}, got {hout.shape} {hout.dtype}")
        hout = _rows_layout(hout) if out is None or hout.strides[-1] == hout.itemsize else None
        if hout is None:
            raise ValueError("`out` must have contiguous classes")
    _core.rows(hx, target, soft, weight, ignore_index, label_smoothing, loss, lse,
               _OUT_KINDS[out_kind], hout, grad_scale, grad_row_scale,
               0 if n_threads is None else n_threads)
    res = None
    if out_kind != "none":
        res = out if out is not None else _back(xp, hout)
    return _back(xp, loss), _back(xp, lse), res


def accepts(xp, device, explicit):
    """CPU arrays of any namespace (they reach the core through DLPack)."""
    return "cpu" in device.lower()
