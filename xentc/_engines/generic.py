"""The generic engine: the row maths in the caller's array-API namespace.

It serves devices the C core and OpenCL cannot (CUDA arrays of torch/CuPy,
JAX) and is the executable specification the compiled engines are tested
against, so it is written for clarity: the formulas of
``xentc._engines.__doc__`` over a block of rows at a time. Blocks bound the
temporaries to a few times ``_BLOCK_ELEMENTS`` beyond what the caller holds.
"""
import math

import numpy as np
from array_api_compat import device

name = "generic"

# Elements per block of rows: 2**22 float32 temporaries are 16 MiB.
_BLOCK_ELEMENTS = 1 << 22


def _block_rows(xp, job):
    """Loss, lse and the second result for the rows of `job` (one block)."""
    x, target, soft, weight = job.x, job.target, job.soft, job.weight
    e, grad_row_scale = job.label_smoothing, job.grad_row_scale
    n_classes = x.shape[1]
    # The rows are those of z = cap * tanh(s * x / cap) (or s * x); the
    # gradient is taken back to x at the end through dz/dx.
    s, cap, zls = job.logit_scale, job.softcap, job.lse_square_scale
    dzdx = None
    if cap is not None:
        u = x * (s / cap)
        x = cap * xp.tanh(u)
        # 1 - tanh(u)**2 as 1 / cosh(u)**2: no cancellation where tanh is
        # close to 1 (cosh overflowing to inf gives the right 0).
        dzdx = s / xp.cosh(u) ** 2
    elif s != 1:
        x = s * x
    m = xp.max(x, axis=1, keepdims=True)
    # torch.logsumexp shifts by 0 where the max is infinite, so a row with
    # +inf gives inf and a row of -inf gives -inf ...
    inf_max = xp.isinf(m)
    m = xp.where(inf_max, xp.zeros_like(m), m)
    d = x - m
    # sum(exp(d)) = (number of maxima) + rest; log1p of (maxima - 1) + rest
    # keeps full relative precision when the sum is close to 1.
    top = d == 0
    rest = xp.sum(xp.where(top, xp.zeros_like(d), xp.exp(d)), axis=1, keepdims=True)
    ls = xp.log1p(xp.sum(xp.astype(top, x.dtype), axis=1, keepdims=True) - 1 + rest)
    lse = (m + ls)[:, 0]
    # ... while torch.log_softmax (and so the loss) is NaN on such rows.
    ls = xp.where(inf_max, xp.full_like(ls, math.nan), ls)
    w = xp.ones(n_classes, dtype=x.dtype, device=device(x)) if weight is None else weight
    loss = coef = keep = None
    if target is not None:
        keep = target != job.ignore_index
        safe = xp.where(keep, target, xp.zeros_like(target))[:, None]
        w_y = xp.take(w, safe[:, 0])
        nll = -xp.take_along_axis(d, safe, axis=1)[:, 0] + ls[:, 0]
        loss = (1 - e) * w_y * nll
        if e > 0:
            loss = loss + e / n_classes * xp.sum(w * (ls - d), axis=1)
        if zls:
            loss = loss + zls * lse * lse  # lse**2 could overflow alone
        loss = xp.where(keep, loss, xp.zeros_like(loss))
        # An ignored row is not read: its lse is 0, as its loss.
        lse = xp.where(keep, lse, xp.zeros_like(lse))
    elif soft is not None:
        coef = w * (soft * (1 - e) + e / n_classes)
        loss = xp.sum(coef * (ls - d), axis=1)
        if zls:
            loss = loss + zls * lse * lse  # lse**2 could overflow alone

    out = None
    if job.out_kind == "log_softmax":
        out = d - ls
    elif job.out_kind == "softmax":
        out = xp.exp(d - ls)
    elif job.out_kind == "grad":
        g = xp.full_like(x[:, :1], job.grad_scale)
        if grad_row_scale is not None:
            g = g * grad_row_scale[:, None]
        p = xp.exp(d - ls)
        if target is not None:
            onehot = xp.astype(
                xp.arange(n_classes, dtype=target.dtype, device=device(x))[None, :] == safe, x.dtype)
            coef = (1 - e) * w_y[:, None] * onehot + e / n_classes * w
        # g * A * p - g * coef, not g * (A * p - coef): a scale of 1/0 then
        # gives NaN over the row, as torch's 0 * inf at the target does.
        alpha = xp.sum(coef, axis=1, keepdims=True)
        if zls:  # d(zls * lse**2) = 2 * zls * lse * p
            alpha = alpha + 2 * zls * lse[:, None]
        out = g * alpha * p - g * coef
        if dzdx is not None:
            out = out * dzdx
        elif s != 1:
            out = out * s
        if target is not None:  # ignored rows are exactly 0, whatever their logits
            out = xp.where(keep[:, None], out, xp.zeros_like(out))
    return loss, lse, out


def rows(xp, job):
    """Per-row loss / lse / second result; see ``xentc._engines``."""
    # NumPy would warn on inf - inf and the like, which are part of torch's
    # semantics here; other namespaces ignore NumPy's error state.
    with np.errstate(all="ignore"):
        return _rows(xp, job)


def _rows(xp, job):
    x = job.x
    n_rows, n_classes = x.shape
    step = max(1, _BLOCK_ELEMENTS // max(n_classes, 1))
    # Half-precision storage is summed in float32, a block at a time.
    half = x.dtype not in (xp.float32, xp.float64)
    res = job.out
    if job.out_kind != "none" and res is None and _mutable(xp):
        res = xp.empty(x.shape, dtype=x.dtype, device=device(x))
    parts = []
    # range(max(n, 1)): with no rows, one run on the empty arrays still
    # gives results of the right shapes and dtypes.
    for start in range(0, max(n_rows, 1), step):
        sl = slice(start, min(start + step, n_rows))
        block = job.block(sl)
        if half:
            block = block.replace(
                x=xp.astype(block.x, xp.float32),
                soft=None if block.soft is None else xp.astype(block.soft, xp.float32))
        loss, lse, ob = _block_rows(xp, block)
        if ob is not None:
            ob = xp.astype(ob, x.dtype, copy=False)
            if res is not None:  # written in place: no second (rows, classes) array
                res[sl, :] = ob
                ob = None
        parts.append((loss, lse, ob))

    def join(k):
        if parts[0][k] is None:
            return None
        return parts[0][k] if len(parts) == 1 else xp.concat([p[k] for p in parts])

    if job.out_kind != "none" and res is None:
        res = join(2)
    return (join(0) if job.want_loss else None), (join(1) if job.want_lse else None), res


def _mutable(xp):
    """Whether arrays of `xp` can be written into (JAX's cannot)."""
    return not xp.__name__.startswith("jax")


def targets(xp, job):
    """Check class targets and sum their weights; see ``xentc._engines``."""
    target, weight, n_classes = job.target, job.weight, job.x.shape[1]
    keep = target != job.ignore_index
    safe = xp.where(keep, target, xp.zeros_like(target))
    if target.shape[0] and (int(xp.min(safe)) < 0 or int(xp.max(safe)) >= n_classes):
        value = int(safe[(safe < 0) | (safe >= n_classes)][0])
        raise IndexError(f"`target` value {value} out of range for {n_classes} classes")
    if weight is None:
        return job, float(xp.count_nonzero(keep))
    w_y = xp.take(weight, safe)
    return job, float(xp.sum(xp.where(keep, w_y, xp.zeros_like(w_y))))


def accepts(xp, device, explicit):
    """Every array-API namespace and device (pyopencl arrays are not array-API arrays)."""
    return not device.startswith("opencl:")


def proba_rows(xp, p, target=None, *, n_threads=None):
    """Extremes, row sums and target entries of probabilities; see ``xentc._engines``."""
    # Out-of-range values may overflow the sums; the caller reports them from lo / hi.
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi, total = float(xp.min(p)), float(xp.max(p)), xp.sum(p, axis=1)
    picked = None
    if target is not None:
        # A gather from the flat array: take_along_axis builds an index per
        # axis, several times slower on NumPy for narrow rows.
        n_rows, n_classes = p.shape
        flat = xp.arange(0, n_rows * n_classes, n_classes, dtype=target.dtype,
                         device=device(p)) + target
        picked = xp.take(xp.reshape(p, (-1,)), flat)
    return lo, hi, total, picked
