"""The CPU engine: hands NumPy arrays to the C core without copying them.

Adapts arrays to the C API (classes contiguous, int64 targets, weight in the
logits' dtype) and allocates outputs; the row maths is in ``src/``.
"""
import numpy as np

from .. import _core

name = "cpu"

_OUT_KINDS = {"none": _core.OUT_NONE, "log_softmax": _core.OUT_LOG_SOFTMAX,
              "softmax": _core.OUT_SOFTMAX, "grad": _core.OUT_GRAD}


def _rows_layout(a):
    """`a` as a 2-D array whose rows have contiguous elements (copied only if not)."""
    a = np.asarray(a)
    if a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize) and a.strides[0] % a.itemsize == 0:
        return a
    return np.ascontiguousarray(a)


def rows(xp, x, *, target=None, soft=None, weight=None, ignore_index=-100,
         label_smoothing=0.0, want_loss=True, want_lse=False, out_kind="none",
         grad_scale=1.0, grad_row_scale=None, out=None, n_threads=None):
    """Per-row loss / lse / second result through the C core; see ``xentc._engines``."""
    x = _rows_layout(x)
    dtype = x.dtype
    n_rows, n_classes = x.shape
    if target is not None:
        target = np.ascontiguousarray(target, dtype=np.int64)
    # The API layer has cast soft targets and weights to x's dtype already.
    if soft is not None:
        soft = _rows_layout(soft)
    if weight is not None:
        weight = np.ascontiguousarray(weight)
    if grad_row_scale is not None:
        grad_row_scale = np.ascontiguousarray(grad_row_scale, dtype=dtype)
    loss = np.empty(n_rows, dtype) if want_loss and (target is not None or soft is not None) else None
    lse = np.empty(n_rows, dtype) if want_lse else None
    if out_kind != "none" and out is None:
        out = np.empty((n_rows, n_classes), dtype)
    _core.rows(x, target, soft, weight, ignore_index, label_smoothing, loss, lse,
               _OUT_KINDS[out_kind], out if out_kind != "none" else None,
               grad_scale, grad_row_scale, 0 if n_threads is None else n_threads)
    return loss, lse, (out if out_kind != "none" else None)


def accepts(xp, device, explicit):
    """NumPy arrays (always on the CPU)."""
    return xp.__name__.endswith("numpy")
