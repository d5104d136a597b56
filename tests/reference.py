"""Independent reference implementations used by the test suite.

Everything here is plain NumPy/SciPy evaluated in float64 (or in the
platform's extended precision where noted), except the gradient oracle, which
is torch autograd in float64.  Nothing in this module imports the library
under test, so a bug in the library cannot leak into the oracle.

The cross-entropy formulas follow the PyTorch documentation of
``torch.nn.functional.cross_entropy``:

class-index targets ``y`` (label smoothing ``e``, class weights ``w``,
``C`` classes, ``lse = logsumexp(x)``)::

    l = (1 - e) * w[y] * (lse - x[y]) + (e / C) * sum_c w[c] * (lse - x[c])
    l = 0 where y == ignore_index
    mean = sum(l) / sum(w[y] over non-ignored elements)   (nan if that sum is 0)

class-probability targets ``q`` (same shape as the input)::

    l = sum_c w[c] * ((1 - e) * q[c] + e / C) * (lse - x[c])
    mean = sum(l) / (number of elements, i.e. N * d1 * ... * dK)
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy.special import logsumexp as _sp_logsumexp

__all__ = [
    "REDUCTIONS",
    "class_axis",
    "lead_shape",
    "cross_entropy_ref",
    "nll_loss_ref",
    "log_softmax_ref",
    "softmax_ref",
    "logsumexp_ref",
    "logsumexp_extended",
    "loss_scale",
    "ce_denominator",
    "ce_expected",
    "nll_expected",
    "softmax_family_tolerance",
    "torch_serial",
    "torch_reference",
    "grad_tolerance",
    "make_logits",
    "make_targets",
    "make_soft_targets",
    "make_weight",
    "make_case",
    "class_count_case",
    "unaligned_copy",
    "eps_of",
    "assert_within",
]

REDUCTIONS = ("none", "sum", "mean")


# ---------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------


def class_axis(ndim: int, axis=None) -> int:
    """The class axis PyTorch uses (1, or 0 for 1-D input), normalised."""
    if axis is None:
        axis = 0 if ndim == 1 else 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for {ndim}-D input")
    return axis % ndim


def lead_shape(shape, axis=None):
    """``shape`` without its class axis: the shape of class targets / per-element losses."""
    ax = class_axis(len(shape), axis)
    return tuple(s for i, s in enumerate(shape) if i != ax)


def eps_of(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _reduce(loss: np.ndarray, reduction: str, denom: float):
    if reduction == "none":
        return loss
    total = np.sum(loss)
    if reduction == "sum":
        return np.float64(total)
    if reduction == "mean":
        if denom == 0:  # torch: nothing contributes -> nan (not +-inf)
            return np.float64(np.nan)
        return np.float64(total) / np.float64(denom)
    raise ValueError(f"unknown reduction {reduction!r}")


# ---------------------------------------------------------------------------
# softmax family
# ---------------------------------------------------------------------------


def logsumexp_ref(x, axis=-1, keepdims=False):
    x = np.asarray(x, dtype=np.float64)
    return _sp_logsumexp(x, axis=axis, keepdims=keepdims)


def log_softmax_ref(x, axis=-1):
    """``(x - max) - log(sum(exp(x - max)))``: ``x - logsumexp(x)`` loses the
    log term where |x| dwarfs it (float64 has 1e38 + log(2) == 1e38, so the
    softmax of [1e38, 1e38] would come out [1, 1]). Rows holding +inf or NaN
    come out NaN, as torch's do."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
        return d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))


def softmax_ref(x, axis=-1):
    return np.exp(log_softmax_ref(x, axis=axis))


def logsumexp_extended(x, axis=-1):
    """logsumexp evaluated in np.longdouble (80-bit on x86-64 Linux).

    Used as the oracle for float64 accuracy checks, where a float64 oracle
    would contribute an error comparable to the one being measured.
    """
    x = np.asarray(x).astype(np.longdouble)
    m = np.max(x, axis=axis, keepdims=True)
    s = np.sum(np.exp(x - m), axis=axis, keepdims=True)
    return np.squeeze(m + np.log(s), axis=axis)


# ---------------------------------------------------------------------------
# cross entropy / nll
# ---------------------------------------------------------------------------


def _moved(x, axis):
    """Float64 copy of ``x`` with the class axis moved last, and that axis."""
    x = np.asarray(x, dtype=np.float64)
    ax = class_axis(x.ndim, axis)
    return np.moveaxis(x, ax, -1), ax


def cross_entropy_ref(
    x,
    target,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    axis=None,
):
    """Float64 cross entropy with PyTorch semantics (see module docstring)."""
    xm, ax = _moved(x, axis)
    n_classes = xm.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    e = float(label_smoothing)
    nlp = _sp_logsumexp(xm, axis=-1, keepdims=True) - xm  # -log p, (..., C)
    target = np.asarray(target)

    if target.dtype.kind == "f":  # class probabilities
        q = np.moveaxis(target.astype(np.float64), ax, -1)
        if e > 0:
            q = (1.0 - e) * q + e / n_classes
        loss = np.sum(w * q * nlp, axis=-1)
        return _reduce(loss, reduction, loss.size)

    t = target.astype(np.int64)
    ignored = t == ignore_index
    safe = np.where(ignored, 0, t)
    if np.any((safe < 0) | (safe >= n_classes)):
        raise IndexError("reference: target out of range")
    w_y = w[safe]
    loss = w_y * np.take_along_axis(nlp, safe[..., None], axis=-1)[..., 0]
    if e > 0:
        loss = (1.0 - e) * loss + (e / n_classes) * np.sum(w * nlp, axis=-1)
    loss = np.where(ignored, 0.0, loss)
    return _reduce(loss, reduction, np.sum(np.where(ignored, 0.0, w_y)))


def nll_loss_ref(x, target, weight=None, ignore_index=-100, reduction="mean", axis=None):
    """Float64 negative log-likelihood with PyTorch semantics (input = log-probs)."""
    xm, _ = _moved(x, axis)
    n_classes = xm.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    t = np.asarray(target).astype(np.int64)
    ignored = t == ignore_index
    safe = np.where(ignored, 0, t)
    w_y = np.where(ignored, 0.0, w[safe])
    picked = np.take_along_axis(xm, safe[..., None], axis=-1)[..., 0]
    loss = np.where(ignored, 0.0, -w_y * picked)
    return _reduce(loss, reduction, np.sum(w_y))


# ---------------------------------------------------------------------------
# error scales: a natural magnitude for each result, used for tolerances
# ---------------------------------------------------------------------------


def loss_scale(x, target, weight=None, axis=None):
    """Per-element magnitude bound for a cross-entropy loss.

    Every term of the loss is a weighted combination of ``lse - x_c``; the
    rounding error of a good implementation is a few ulp of
    ``max|w| * (|lse| + max_c |x_c|) * (sum of target mass)``.
    """
    xm, ax = _moved(x, axis)
    lse = _sp_logsumexp(xm, axis=-1)
    wmax = 1.0 if weight is None else float(np.max(np.abs(np.asarray(weight, np.float64))))
    scale = wmax * (np.abs(lse) + np.max(np.abs(xm), axis=-1))
    target = np.asarray(target)
    if target.dtype.kind == "f":
        q = np.moveaxis(target.astype(np.float64), ax, -1)
        scale = scale * np.maximum(1.0, np.sum(np.abs(q), axis=-1))
    return scale


def ce_denominator(x, target, weight=None, ignore_index=-100, axis=None):
    """What reduction="mean" divides by."""
    target = np.asarray(target)
    xm, _ = _moved(x, axis)
    if target.dtype.kind == "f":
        return float(np.prod(xm.shape[:-1]))
    t = target.astype(np.int64)
    ignored = t == ignore_index
    if weight is None:
        return float(np.count_nonzero(~ignored))
    w = np.asarray(weight, np.float64)
    return float(np.sum(w[np.where(ignored, 0, t)][~ignored]))


def _tolerance(elem_tol, reduction, denom, want, rtol):
    if reduction == "none":
        return elem_tol
    tol = float(np.sum(elem_tol))
    if reduction == "mean":
        tol = tol / abs(denom) if denom else 0.0
    with np.errstate(invalid="ignore"):
        return tol + rtol * np.abs(want)


def ce_expected(x, target, dtype, reduction="mean", weight=None, ignore_index=-100,
                label_smoothing=0.0, axis=None, ulps=16, rtol=None):
    """(reference value, absolute tolerance) for a cross_entropy call.

    Element tolerance: ``ulps`` ulp of the element's natural magnitude
    (see loss_scale).  Aggregated results additionally get ``rtol`` relative
    slack (1e-5 for float32, 1e-12 for float64 by default).
    """
    want = cross_entropy_ref(x, target, weight, ignore_index, reduction, label_smoothing, axis)
    elem_tol = ulps * eps_of(dtype) * loss_scale(x, target, weight, axis)
    if rtol is None:
        rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    denom = ce_denominator(x, target, weight, ignore_index, axis)
    return want, _tolerance(elem_tol, reduction, denom, want, rtol)


def nll_expected(x, target, dtype, reduction="mean", weight=None, ignore_index=-100,
                 axis=None, ulps=4, rtol=None):
    """(reference value, absolute tolerance) for an nll_loss call."""
    want = nll_loss_ref(x, target, weight, ignore_index, reduction, axis)
    xm, _ = _moved(x, axis)
    wmax = 1.0 if weight is None else float(np.max(np.abs(np.asarray(weight, np.float64))))
    elem_tol = ulps * eps_of(dtype) * wmax * np.max(np.abs(xm), axis=-1)
    if rtol is None:
        rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    denom = ce_denominator(x, target, weight, ignore_index, axis)
    return want, _tolerance(elem_tol, reduction, denom, want, rtol)


def softmax_family_tolerance(kind, x, axis, dtype, ulps=8, keepdims=False):
    """Absolute tolerance for log_softmax / softmax / logsumexp results."""
    x64 = np.asarray(x, dtype=np.float64)
    lse = _sp_logsumexp(x64, axis=axis, keepdims=True)
    mag = np.abs(lse) + np.max(np.abs(x64), axis=axis, keepdims=True)
    eps = eps_of(dtype)
    if kind == "logsumexp":
        tol = ulps * eps * mag
        return tol if keepdims else np.squeeze(tol, axis=axis)
    if kind == "log_softmax":
        return ulps * eps * (mag + np.abs(x64))
    if kind == "softmax":
        # exp(x - max) / sum: relative error ~ eps * (1 + |x - max|)
        p = np.exp(x64 - lse)
        gap = np.max(x64, axis=axis, keepdims=True) - x64
        with np.errstate(invalid="ignore"):
            return ulps * eps * p * (2.0 + gap) + 2 * np.finfo(dtype).tiny
    raise ValueError(kind)


# ---------------------------------------------------------------------------
# gradients: torch autograd in float64, and a tolerance for each element
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def torch_serial():
    """torch on one thread: the reference tensors are small, and the pool's
    barriers would cost more than the work wherever the cores are busy."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def torch_reference(x, target, weight=None, ignore_index=-100, reduction="mean",
                    label_smoothing=0.0, axis=None, grad_output=None):
    """Loss and d(grad_output . loss)/dx by torch autograd in float64, in x's layout."""
    import torch
    import torch.nn.functional as F

    x = np.asarray(x, np.float64)
    ax, tax = class_axis(x.ndim, axis), (0 if x.ndim == 1 else 1)
    xt = torch.tensor(np.moveaxis(x, ax, tax), dtype=torch.float64, requires_grad=True)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        tt = torch.tensor(np.moveaxis(target.astype(np.float64), ax, tax))
    else:
        tt = torch.tensor(target.astype(np.int64))
    wt = None if weight is None else torch.tensor(np.asarray(weight, np.float64))
    with torch_serial():
        loss = F.cross_entropy(xt, tt, weight=wt, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
        go = (torch.ones_like(loss) if grad_output is None
              else torch.tensor(np.asarray(grad_output, np.float64)))
        loss.backward(go)
    return loss.detach().numpy(), np.moveaxis(xt.grad.numpy(), tax, ax)


def grad_tolerance(x, dtype, target, weight=None, ignore_index=-100, reduction="mean",
                   axis=None, grad_output=None, ulps=16, **_):
    """Absolute tolerance for each gradient element.

    A gradient row is ``g * (A * softmax(x) - coef)`` with ``A = sum(coef) <=
    max|w| * (target mass)``, and softmax has an absolute error of a few ulp
    times ``|lse| + max|x|``; so: ``ulps`` ulp of ``|g| * max|w| * mass *
    (1 + |lse| + max|x|)``, divided by the mean's denominator. Where that is
    zero, so is the tolerance: zeros must be exact and NaN / inf must match.
    """
    ax = class_axis(np.ndim(x), axis)
    w_max = 1.0 if weight is None else float(np.max(np.abs(weight)))
    target = np.asarray(target)
    mass = 1.0
    if target.dtype.kind == "f":
        mass = np.maximum(1.0, np.sum(np.abs(np.moveaxis(target.astype(np.float64), ax, -1)), -1))
    scale = loss_scale(x, target, weight, axis) + w_max * mass
    go = 1.0 if grad_output is None else np.abs(np.asarray(grad_output, np.float64))
    if reduction == "mean":
        den = ce_denominator(x, target, weight, ignore_index, axis)
        go = go / abs(den) if den else 0.0
    tol = np.broadcast_to(ulps * eps_of(dtype) * go * scale, lead_shape(np.shape(x), axis))
    return np.broadcast_to(np.expand_dims(tol, ax), np.shape(x))


def assert_within(got, want, tol, what=""):
    """|got - want| <= tol elementwise; NaNs and infinities must match."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), want.shape)
    same_nonfinite = (np.isnan(got) & np.isnan(want)) | (np.isinf(want) & (got == want))
    finite = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        ok = same_nonfinite | (finite & (np.abs(got - want) <= tol))
    if not np.all(ok):
        bad = np.flatnonzero(~ok.ravel())
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {ok.size} elements out of tolerance; "
            f"first at flat index {i}: got {got.ravel()[i]!r}, want {want.ravel()[i]!r}, "
            f"tol {tol.ravel()[i]!r}, err {abs(got.ravel()[i] - want.ravel()[i])!r}"
        )


# ---------------------------------------------------------------------------
# data generation
# ---------------------------------------------------------------------------


def make_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_targets(rng, shape, n_classes, ignore_index=None, dtype=np.int64, frac_ignored=0.25):
    """Random class indices; a fraction set to ``ignore_index`` when given."""
    t = rng.integers(0, n_classes, size=shape)
    if ignore_index is not None and t.size:
        mask = rng.random(shape) < frac_ignored
        flat = np.asarray(mask).reshape(-1)
        flat[0] = True  # at least one ignored element
        if t.size > 1:
            flat[-1] = False  # ... and at least one kept
        mask = flat.reshape(np.shape(t))
        t = np.where(mask, ignore_index, t)
    return np.asarray(t).astype(dtype)


def make_soft_targets(rng, shape, dtype, axis=None):
    """Class probabilities along the class axis (softmax of random values)."""
    ax = class_axis(len(shape), axis)
    return softmax_ref(rng.standard_normal(shape) * 2.0, axis=ax).astype(dtype)


def make_weight(rng, n_classes, dtype):
    return rng.uniform(0.25, 2.0, size=n_classes).astype(dtype)


def make_case(rng, shape, axis, dtype, soft):
    """Logits, weights, targets and the matching ``ignore_index`` keyword for one case.

    Class targets get some ``ignore_index=-100`` entries (none for 1-D input,
    whose single target must count); soft targets are probabilities.
    """
    ax = class_axis(len(shape), axis)
    n_classes = shape[ax]
    x = make_logits(rng, shape, dtype)
    w = make_weight(rng, n_classes, dtype)
    if soft:
        return x, w, make_soft_targets(rng, shape, dtype, axis=axis), {}
    tshape = tuple(s for i, s in enumerate(shape) if i != ax)
    t = make_targets(rng, tshape, n_classes, ignore_index=-100 if tshape else None)
    return x, w, t, dict(ignore_index=-100)


def class_count_case(rng, n_classes, variant, dtype):
    """Three rows of ``n_classes`` logits, their targets and keyword arguments.

    ``variant``: "plain" (class targets), "smoothed_weighted" (class targets,
    weights, label smoothing 0.2) or "soft" (weighted class probabilities).
    """
    x = make_logits(rng, (3, n_classes), dtype)
    kw = {}
    if variant == "soft":
        t = make_soft_targets(rng, x.shape, dtype)
        kw["weight"] = make_weight(rng, n_classes, dtype)
    else:
        t = make_targets(rng, (3,), n_classes)
        if variant == "smoothed_weighted":
            kw = dict(weight=make_weight(rng, n_classes, dtype), label_smoothing=0.2)
    return x, t, kw


def unaligned_copy(a, byte_offset):
    """A copy of ``a`` whose data starts ``byte_offset`` bytes into a buffer."""
    a = np.ascontiguousarray(a)
    buf = bytearray(a.nbytes + byte_offset + 64)
    base = np.frombuffer(buf, dtype=np.uint8)
    # make the starting address deliberately misaligned relative to 64 bytes
    shift = (-base.ctypes.data) % 64
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=shift + byte_offset).reshape(a.shape)
    out[...] = a
    return out


# ---------------------------------------------------------------------------
# the row options of large-vocabulary training, by torch autograd in float64
# ---------------------------------------------------------------------------


def options_reference(x, target, weight=None, ignore_index=-100, reduction="mean",
                      label_smoothing=0.0, axis=None, logit_scale=1.0, softcap=None,
                      lse_square_scale=0.0, sample_weight=None, grad_output=None):
    """(loss, z_loss, lse, grad) of the option formula, by torch in float64.

    z = softcap * tanh(logit_scale * x / softcap) (or logit_scale * x); each
    row's loss is torch's cross-entropy of z plus lse_square_scale *
    logsumexp(z)**2 (0 for ignored rows), times sample_weight; "mean"
    divides by the sum over kept rows of sample_weight * weight[target]
    (sample_weight alone for probability targets). lse is 0 on ignored rows.
    The gradient is d(grad_output . loss)/dx, x in its own layout.
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x, np.float64)
    ax, tax = class_axis(x.ndim, axis), (0 if x.ndim == 1 else 1)
    xt = torch.tensor(np.moveaxis(x, ax, tax), dtype=torch.float64, requires_grad=True)
    target = np.asarray(target)
    soft = target.dtype.kind == "f"
    if soft:
        tt = torch.tensor(np.moveaxis(target.astype(np.float64), ax, tax))
    else:
        tt = torch.tensor(target.astype(np.int64))
    wt = None if weight is None else torch.tensor(np.asarray(weight, np.float64))
    with torch_serial():
        z = xt * logit_scale if softcap is None else softcap * torch.tanh(xt * logit_scale / softcap)
        rows = F.cross_entropy(z, tt, weight=wt, ignore_index=ignore_index, reduction="none",
                               label_smoothing=label_smoothing)
        keep = torch.ones_like(rows, dtype=torch.bool) if soft else tt != ignore_index
        lse = torch.where(keep, torch.logsumexp(z, dim=tax), 0.0)
        sw = torch.ones_like(rows) if sample_weight is None else torch.tensor(
            np.asarray(sample_weight, np.float64))
        z_rows = lse_square_scale * lse ** 2 * sw
        rows = rows * sw + z_rows
        if soft:
            den = sw.sum()
        else:
            w_y = torch.ones_like(rows) if wt is None else wt[torch.where(keep, tt, 0)]
            den = torch.where(keep, w_y * sw, 0.0).sum()

        def reduce(r):
            return r.sum() / den if reduction == "mean" else r.sum() if reduction == "sum" else r

        loss = reduce(rows)
        go = (torch.ones_like(loss) if grad_output is None
              else torch.tensor(np.asarray(grad_output, np.float64)))
        loss.backward(go)
    return (loss.detach().numpy(), reduce(z_rows).detach().numpy(), lse.detach().numpy(),
            np.moveaxis(xt.grad.numpy(), tax, ax))


def options_tolerance(x, target, dtype, weight=None, ignore_index=-100, reduction="mean",
                      axis=None, logit_scale=1.0, softcap=None, lse_square_scale=0.0,
                      sample_weight=None, grad_output=None, ulps=16, **_):
    """Absolute tolerances (loss, lse, grad) for `options_reference`'s results.

    The rows are those of z, which the engines hold rounded to the dtype:
    each loss term ``lse - z_c`` is good to a few ulp of ``|lse| + max|z|``,
    the z-loss to ``2 * zls * |lse|`` times that, and a gradient element to a
    few ulp of ``(max|w| * mass + 2 * zls * |lse|) * (1 + |lse| + max|z|)``
    times ``dz/dx <= logit_scale``; all times |sample_weight| and the scale
    of the reduction.
    """
    x64 = np.asarray(x, np.float64) * logit_scale
    z = x64 if softcap is None else softcap * np.tanh(x64 / softcap)
    zm, ax = _moved(z, axis)
    lse = np.abs(_sp_logsumexp(zm, axis=-1))
    mag = lse + np.max(np.abs(zm), axis=-1)
    w_max = 1.0 if weight is None else float(np.max(np.abs(weight)))
    target = np.asarray(target)
    mass = 1.0
    if target.dtype.kind == "f":
        mass = np.maximum(1.0, np.sum(np.abs(np.moveaxis(target.astype(np.float64), ax, -1)), -1))
    sw = 1.0 if sample_weight is None else np.abs(np.asarray(sample_weight, np.float64))
    coef = w_max * mass + 2 * lse_square_scale * lse
    eps = ulps * eps_of(dtype)
    elem = eps * coef * mag * sw
    if target.dtype.kind == "f":
        den = float(np.sum(np.broadcast_to(sw, lse.shape)))
    else:
        keep = target != ignore_index
        w_y = 1.0 if weight is None else np.asarray(weight, np.float64)[np.where(keep, target, 0)]
        den = float(np.sum(np.where(keep, w_y * np.broadcast_to(sw, lse.shape), 0.0)))
    loss_tol = _tolerance(elem, reduction, den, 0.0, 0.0)
    go = 1.0 if grad_output is None else np.abs(np.asarray(grad_output, np.float64))
    if reduction == "mean":
        go = go / abs(den) if den else 0.0
    grad = eps * go * sw * logit_scale * coef * (1.0 + mag)
    grad = np.broadcast_to(np.expand_dims(np.broadcast_to(grad, lse.shape), ax), np.shape(x))
    return loss_tol, eps * mag, grad
