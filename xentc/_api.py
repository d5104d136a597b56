"""Public functions: validation and torch's semantics, namespace in -> namespace out.

Layers, each with one job, so that a new array library or device only ever
touches the layer below this one:

1. API (this module): check arguments, move the class axis last and flatten
   to (rows, classes), apply weights / ignore_index / smoothing / reduction,
   and give results back in the caller's namespace and shape.
2. Dispatch (``_dispatch``): pick the engine for (namespace, device), cached.
3. Engine (``_engines``): adapt arrays and compute per-row loss / log-sum-exp
   / log_softmax / softmax / gradient, all with one signature.
4. Kernel (``src/``, via ``_core``): the fused, vectorized, threaded rows.

The per-row work is O(rows * classes) and lives in the engines; everything
here is O(rows) or a reshape, written once with the array API.
"""
import math
import sys
from typing import Any, Literal

from . import _dispatch
from ._args import class_axis as _class_axis
from ._args import ignore_index as _ignore_index
from ._args import n_threads as _n_threads
from ._engines import RowJob

_REDUCTIONS = ("none", "sum", "mean")
_EMPTY = ("nan", "zero")

# Any array-API array (NumPy, torch, CuPy, JAX, array-api-strict...) or a
# pyopencl.array.Array: there is no common static type to name.
Array = Any
Reduction = Literal["none", "sum", "mean"]
Backend = Literal["auto", "cpu", "opencl", "generic"]
Empty = Literal["nan", "zero"]


def check_floating(xp, a, what):
    if not _dispatch.isdtype(xp, a.dtype, "real floating"):
        raise TypeError(f"`{what}` must be a real floating-point array, got dtype {a.dtype}")


def _as_rows(xp, a, axis):
    """(rows, classes) view of `a` with `axis` last (a copy only if needed)."""
    # Each call only where it changes something: some libraries (JAX) copy
    # even for a no-op move or reshape.
    if axis != a.ndim - 1:
        a = xp.moveaxis(a, axis, -1)
    lead_shape = tuple(a.shape[:-1])
    if a.ndim != 2:
        a = xp.reshape(a, (math.prod(lead_shape), a.shape[-1]))
    return a, lead_shape


def _from_rows(xp, r, lead_shape, axis):
    """Inverse of _as_rows for an (rows, classes) result."""
    return xp.moveaxis(xp.reshape(r, lead_shape + (r.shape[-1],)), -1, axis)


def acc_dtype(xp, dtype):
    """The dtype sums run in: float32 for half-precision storage, else the input's."""
    return dtype if dtype in (xp.float32, xp.float64) else xp.float32


def _weight(xp, weight, n_classes, dtype):
    if weight is None:
        return None
    check_floating(xp, weight, "weight")
    if weight.ndim != 1 or weight.shape[0] != n_classes:
        raise ValueError(f"`weight` must have shape ({n_classes},) for {n_classes} "
                         f"classes, got {tuple(weight.shape)}")
    return xp.astype(weight, dtype, copy=False)


def _class_targets(xp, target, lead_shape, n_classes):
    """Class-index targets as a flat int64 array (their range is the engine's to check)."""
    if not _dispatch.isdtype(xp, target.dtype, "integral"):
        raise TypeError(f"`target` must hold integer class indices or floating "
                        f"class probabilities, got dtype {target.dtype}")
    if tuple(target.shape) != lead_shape:
        raise ValueError(f"`target` shape {tuple(target.shape)} does not match input: "
                         f"expected {lead_shape} (input shape without the class axis)")
    t = xp.reshape(target, (-1,))
    # uint64 values past int64's range would wrap onto valid classes.
    if target.dtype == xp.uint64 and t.shape[0] and int(xp.max(t)) > 2**63 - 1:
        raise IndexError(f"`target` value {int(xp.max(t))} out of range for {n_classes} classes")
    index = _dispatch.index_dtype(xp)
    return t if t.dtype == index else xp.astype(t, index, copy=False)


def _reduce(xp, loss, reduction, lead_shape, divisor, empty="nan"):
    if reduction == "none":
        return xp.reshape(loss, lead_shape)
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    if divisor:
        return total / divisor
    # No weight to divide by gives NaN, as in torch (whose smoothing term
    # would otherwise be x / 0 = inf), or 0 where the caller asked for it.
    return xp.zeros_like(total) if empty == "zero" else xp.full_like(total, math.nan)


def mean_options(reduction, normalizer, empty):
    """`normalizer` as a float (None stays None), after checking it and `empty`."""
    if empty not in _EMPTY:
        raise ValueError(f"`empty` must be one of {_EMPTY}, got {empty!r}")
    if normalizer is None:
        return None
    if reduction != "mean":
        raise ValueError(f"`normalizer` divides the 'mean' reduction; reduction="
                         f"{reduction!r} has nothing to divide")
    value = _scalar(normalizer, "normalizer")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`normalizer` must be a finite number > 0, got {normalizer!r}")
    return value


def _positive(value, what):
    """`value` as a float, checked to be finite and > 0."""
    v = _scalar(value, what)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"`{what}` must be a finite number > 0, got {value!r}")
    return v


def row_options(logit_scale, softcap, lse_square_scale):
    """The row job's z options, checked: (logit_scale, softcap, lse_square_scale)."""
    if (softcap is None and type(logit_scale) in (int, float) and logit_scale == 1.0
            and type(lse_square_scale) in (int, float) and lse_square_scale == 0.0):
        return 1.0, None, 0.0  # the defaults, checked in a small call's microseconds
    zls = _scalar(lse_square_scale, "lse_square_scale")
    if not (math.isfinite(zls) and zls >= 0):
        raise ValueError(f"`lse_square_scale` must be a finite number >= 0, "
                         f"got {lse_square_scale!r}")
    return (_positive(logit_scale, "logit_scale"),
            None if softcap is None else _positive(softcap, "softcap"), zls)


def _sample_weight(xp, sample_weight, lead_shape, dtype):
    """`sample_weight` as a flat array of the accumulation dtype (None stays None)."""
    if sample_weight is None:
        return None
    if not _dispatch.isdtype(xp, sample_weight.dtype, ("real floating", "integral")):
        raise TypeError(f"`sample_weight` must be a real array, got dtype {sample_weight.dtype}")
    if tuple(sample_weight.shape) != lead_shape:
        raise ValueError(f"`sample_weight` must have the loss's shape {lead_shape} (input "
                         f"shape without the class axis), got {tuple(sample_weight.shape)}")
    sw = xp.reshape(xp.astype(sample_weight, dtype, copy=False), (-1,))
    if not bool(xp.all(xp.isfinite(sw))):
        raise ValueError("`sample_weight` must be finite (it holds NaN or inf)")
    return sw


def _prepare(input, target, weight, reduction, axis, n_threads, backend, sample_weight=None):
    """Checks shared by the losses; the logits as (rows, classes) and the engine."""
    xp = _dispatch.namespace(input=input, target=target,
                             optional={"weight": weight, "sample_weight": sample_weight})
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    n_threads = _n_threads(n_threads)
    check_floating(xp, input, "input")
    ax = _class_axis(input.ndim, axis)
    x, lead_shape = _as_rows(xp, input, ax)
    if x.shape[1] == 0:
        raise ValueError("`input` has an empty class axis (0 classes)")
    w = _weight(xp, weight, x.shape[1], acc_dtype(xp, input.dtype))
    engine = _dispatch.engine_for(xp, input, backend)
    return xp, x, ax, lead_shape, w, n_threads, engine


def cross_entropy(input: Array, target: Array, weight: Array | None = None,
                  ignore_index: int = -100, reduction: Reduction = "mean",
                  label_smoothing: float = 0.0, *, axis: int | None = None,
                  n_threads: int | None = None, backend: Backend = "auto",
                  normalizer: float | None = None, empty: Empty = "nan",
                  logit_scale: float = 1.0, softcap: float | None = None,
                  lse_square_scale: float = 0.0, sample_weight: Array | None = None,
                  return_z_loss: bool = False, return_lse: bool = False
                  ) -> Array | tuple[Array, ...]:
    """Cross-entropy between logits and targets, as ``torch.nn.functional.cross_entropy``.

    With the options that large-vocabulary training uses, all computed in
    the same pass over the logits: each row is taken as
    ``z = softcap * tanh(logit_scale * input / softcap)`` (``logit_scale *
    input`` without `softcap`), its loss is torch's cross-entropy of z plus
    ``lse_square_scale * logsumexp(z)**2``, times `sample_weight`.

    Parameters
    ----------
    input : array
        Unnormalized logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``
        (classes on `axis`). float32 or float64; float16 and bfloat16 are
        read as stored and summed in float32.
    target : array
        Class indices (any integer dtype) of shape `input` without the class
        axis, or class probabilities of the same shape as `input`.
    weight : array, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, default -100
        Class-index target value that contributes neither loss nor weight.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the summed weight of the non-ignored targets
        (the number of elements for probability targets), as torch does.
    label_smoothing : float, default 0.0
        In ``[0, 1]``: mix the target with the uniform distribution.
    axis : int, optional
        The class axis; default torch's (1, or 0 for 1-D input). ``axis=-1``
        takes ``(B, T, V)`` language-model logits directly.
    n_threads : int, optional
        Threads of the C core; default all cores (OpenMP's limit, which
        threadpoolctl and ``OMP_NUM_THREADS`` set). Results do not depend on it.
    backend : {"auto", "cpu", "opencl", "generic"}, default "auto"
        Engine: the C core for CPU arrays, OpenCL for ``pyopencl.array.Array``,
        else the array-API engine; naming one that cannot serve the arrays raises.
    normalizer : float, optional
        For ``reduction="mean"``: divide the summed loss by this instead of
        the summed weight of this call's kept targets, e.g. the kept-token
        count of a whole gradient-accumulation batch, so that the losses and
        gradients of its micro-batches add up to those of the full batch.
    empty : {"nan", "zero"}, default "nan"
        What ``"mean"`` gives when its divisor is 0 (every target ignored, or
        zero weight): torch's NaN, or 0 with a zero gradient.
    logit_scale : float, default 1.0
        Multiplies the logits first (flash-attn's name); > 0.
    softcap : float, optional
        Caps the (scaled) logits smoothly to ``(-softcap, softcap)`` with
        ``tanh`` (Gemma 2 uses 30.0); > 0. Gradients are with respect to
        `input`.
    lse_square_scale : float, default 0.0
        The z-loss of PaLM: adds ``lse_square_scale * logsumexp(z)**2`` to
        each row's loss (not to ignored rows); >= 0.
    sample_weight : array, optional
        Per-row weights of the loss's shape (`input` without the class
        axis), multiplying each row's loss; ``"mean"`` then divides by the
        sum over kept rows of ``sample_weight * weight[target]`` (of
        `sample_weight` for probability targets).
    return_z_loss : bool, default False
        Also return the z-loss term alone, reduced as the loss.
    return_lse : bool, default False
        Also return each row's ``logsumexp(z)``, of the loss's unreduced
        shape (0 where the target is `ignore_index`: such rows are not read).

    Returns
    -------
    loss : array
        The loss in `input`'s namespace and dtype: a 0-d value, or the
        per-element losses of shape `input` without the class axis for
        ``reduction="none"``.
    z_loss : array
        Only with `return_z_loss`: the z-loss part of `loss`.
    lse : array
        Only with `return_lse`. With either, the result is the tuple
        ``(loss, z_loss, lse)`` of those asked for.

    Raises
    ------
    IndexError
        A class target outside ``[0, C)`` that is not `ignore_index`.
    ValueError, TypeError
        Any other inconsistent argument, naming it.

    Examples
    --------
    >>> import numpy as np, xentc
    >>> x = np.array([[0.2, 0.3, 0.5], [0.5, 0.2, 0.3]], np.float32)
    >>> float(xentc.cross_entropy(x, np.array([2, 1]), np.array([2., 4., 6.], np.float32)))
    1.059831...
    """
    options = dict(ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, axis=axis, n_threads=n_threads,
                   backend=backend, normalizer=normalizer, empty=empty,
                   logit_scale=logit_scale, softcap=softcap,
                   lse_square_scale=lse_square_scale, return_z_loss=return_z_loss,
                   return_lse=return_lse)
    if _dispatch.is_dask(input):  # lazy chunks: each through this call
        from . import _dask
        return _dask.cross_entropy(input, target, weight, sample_weight=sample_weight,
                                   **options)
    if tracks_grad(input):  # a training loss: torch's autograd gets the fused gradient
        from . import _autograd
        results = _autograd.cross_entropy(
            input, dict(target=target, weight=weight, sample_weight=sample_weight),
            lambda input, **arrays: LossCall(input, **arrays, **options, want_grad=True))
    else:
        results = LossCall(input, target, weight, sample_weight=sample_weight, **options).run()[0]
    return results if len(results) > 1 else results[0]


def tracks_grad(a):
    """Whether `a` is a torch tensor that autograd follows (without importing torch)."""
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(a, torch.Tensor) and a.requires_grad
            and torch.is_grad_enabled())


def cross_entropy_with_grad(input: Array, target: Array, weight: Array | None = None,
                            ignore_index: int = -100, reduction: Reduction = "mean",
                            label_smoothing: float = 0.0, *,
                            grad_output: float | Array | None = None, out: Array | None = None,
                            axis: int | None = None, n_threads: int | None = None,
                            backend: Backend = "auto", normalizer: float | None = None,
                            empty: Empty = "nan", logit_scale: float = 1.0,
                            softcap: float | None = None, lse_square_scale: float = 0.0,
                            sample_weight: Array | None = None, return_z_loss: bool = False,
                            return_lse: bool = False) -> tuple[Array, ...]:
    """Cross-entropy and its gradient with respect to `input`, in one pass over the logits.

    The fused forward and backward of `cross_entropy`: each row of logits is
    read once, and its gradient written while the row is still in cache.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing, axis, n_threads, backend
        As for `cross_entropy`.
    normalizer, empty, logit_scale, softcap, lse_square_scale, sample_weight
        As for `cross_entropy`: the gradient is that of the loss they give.
    return_z_loss, return_lse
        As for `cross_entropy`: those results come between the loss and the
        gradient.
    grad_output : float or array, optional
        The gradient of the final objective with respect to the loss
        (default 1): a scalar for ``reduction="sum"`` / ``"mean"``, an array of
        the loss's shape for ``reduction="none"``.
    out : array, optional
        Where to write the gradient: an array of `input`'s shape and dtype, in
        its namespace. ``out=input`` overwrites the logits with their gradient,
        so a forward and backward pass needs no memory beyond the logits.

    Returns
    -------
    loss : array
        As returned by `cross_entropy` (followed by `z_loss` and `lse` when
        asked for).
    grad_input : array
        ``grad_output * d(loss)/d(input)``, `input`'s shape and dtype (`out`
        when given). Rows whose target is `ignore_index` are exactly 0.

    Examples
    --------
    >>> import numpy as np, xentc
    >>> x = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    >>> loss, grad = xentc.cross_entropy_with_grad(x, np.array([2, 0]))
    >>> grad.round(4)
    array([[ 0.045 ,  0.1224, -0.1674],
           [-0.3333,  0.1667,  0.1667]])
    """
    if _dispatch.is_dask(input):
        from . import _dask
        return _dask.cross_entropy_with_grad(
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, grad_output=grad_output, out=out, axis=axis,
            n_threads=n_threads, backend=backend, normalizer=normalizer, empty=empty,
            logit_scale=logit_scale, softcap=softcap, lse_square_scale=lse_square_scale,
            sample_weight=sample_weight, return_z_loss=return_z_loss, return_lse=return_lse)
    results, grad = LossCall(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, axis=axis, n_threads=n_threads, backend=backend,
        normalizer=normalizer, empty=empty, logit_scale=logit_scale, softcap=softcap,
        lse_square_scale=lse_square_scale, sample_weight=sample_weight,
        return_z_loss=return_z_loss, return_lse=return_lse,
        want_grad=True).run(grad_output, out)
    return (*results, grad)


class LossCall:
    """One validated loss call: its row job, and how the engine's per-row results
    become the caller's (reduced, in the input's shape).

    Built once per call; the torch autograd node keeps it to compute the
    gradient again on a second backward pass (``xentc._autograd``).
    ``job`` is the row job in the engine's form; ``spec`` is the same job
    with every array still in the caller's namespace.
    """

    def __init__(self, input, target, weight=None, *, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0, axis=None, n_threads=None, backend="auto",
                 normalizer=None, empty="nan", logit_scale=1.0, softcap=None,
                 lse_square_scale=0.0, sample_weight=None, return_z_loss=False,
                 return_lse=False, want_grad=False):
        self.normalizer = mean_options(reduction, normalizer, empty)
        self.empty = empty
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}")
        ignore_index = _ignore_index(ignore_index)
        logit_scale, softcap, zls = row_options(logit_scale, softcap, lse_square_scale)
        xp, x, ax, lead_shape, w, n_threads, engine = _prepare(
            input, target, weight, reduction, axis, n_threads, backend, sample_weight)
        acc = acc_dtype(xp, input.dtype)
        self.sample_weight = _sample_weight(xp, sample_weight, lead_shape, acc)
        self.returns = (bool(return_z_loss), bool(return_lse))
        job = dict(weight=w, label_smoothing=label_smoothing, n_threads=n_threads,
                   logit_scale=logit_scale, softcap=softcap, lse_square_scale=zls,
                   want_lse=any(self.returns), out_kind="grad" if want_grad else "none")
        if _dispatch.isdtype(xp, target.dtype, "real floating"):
            if tuple(target.shape) != tuple(input.shape):
                raise ValueError(f"`target` of class probabilities must have the input's "
                                 f"shape {tuple(input.shape)}, got {tuple(target.shape)}")
            if ignore_index >= 0:
                raise ValueError("`ignore_index` is not supported with class-probability targets")
            soft, _ = _as_rows(xp, xp.astype(target, input.dtype, copy=False), ax)
            self.spec = self.job = RowJob(x, soft=soft, **job)
            self.denominator = float(x.shape[0])
            t = None
        else:
            t = _class_targets(xp, target, lead_shape, x.shape[1])
            # Checked before any row is read; the mean's denominator on the way,
            # and the targets and weights in the engine's form for the rows.
            self.spec = RowJob(x, target=t, ignore_index=ignore_index, **job)
            self.job, self.denominator = engine.targets(xp, self.spec)
        if self.sample_weight is not None:  # the rows kept: only needed here
            keep = None if t is None else t != ignore_index
            self.denominator = weighted_count(xp, self.sample_weight, keep, w, t)
        self.xp, self.engine, self.input = xp, engine, input
        self.reduction, self.axis, self.lead_shape = reduction, ax, lead_shape

    @property
    def divisor(self):
        """What ``"mean"`` divides the summed loss by."""
        return self.denominator if self.normalizer is None else self.normalizer

    def run(self, grad_output=None, out=None):
        """The results and, for a call with ``want_grad``, the gradient (else None).

        The results are the tuple (loss, z_loss, lse) of those asked for;
        `grad_output` and `out` are those of `cross_entropy_with_grad`.
        """
        xp, job = self.xp, self.job
        if job.out_kind == "grad":
            job = job.replace(**self._grad_args(grad_output, out))
        loss, lse, grad = self.engine.rows(xp, job)
        results = self.results(loss, lse)
        if job.out_kind != "grad":
            return results, None
        if job.out is None:
            grad = _from_rows(xp, grad, self.lead_shape, self.axis)
            if out is not None:  # only a copy could give `out` as rows
                out[...] = grad
                grad = out
        else:
            grad = out
        return results, grad

    def results(self, loss, lse):
        """The caller's results, (loss, z_loss, lse) of those asked for, from the
        engine's per-row loss and lse of every row."""
        xp, sw = self.xp, self.sample_weight
        if sw is not None:
            loss = loss * sw
        results = [self._reduce(loss)]
        if self.returns[0]:  # zero on ignored rows, whose lse is 0
            # (zls * lse) * lse: lse**2 alone overflows float32 where |lse| > 1.8e19
            z = self.job.lse_square_scale * lse * lse
            results.append(self._reduce(z if sw is None else z * sw))
        if self.returns[1]:
            results.append(xp.astype(xp.reshape(lse, self.lead_shape), self.input.dtype,
                                     copy=False))
        return tuple(results)

    def grad_fields(self, grad_output=None):
        """The row job's fields of the gradient of every row (scales, no `out`)."""
        return self._grad_args(grad_output, None)

    def _reduce(self, rows):
        """Per-row values reduced as the loss, in the input's dtype."""
        xp = self.xp
        r = _reduce(xp, rows, self.reduction, self.lead_shape, self.divisor, self.empty)
        if r.dtype != self.input.dtype:  # float32 sums of half-precision logits
            r = xp.astype(r, self.input.dtype, copy=False)
        return r

    def _grad_args(self, grad_output, out):
        """Job fields of the gradient: its scales and destination rows."""
        xp, input = self.xp, self.input
        args = dict(grad_scale=1.0, grad_row_scale=self.sample_weight, out=None)
        if self.reduction == "none":
            if grad_output is not None:
                go = xp.asarray(grad_output, dtype=acc_dtype(xp, input.dtype),
                                device=_dispatch.device(input))
                if tuple(go.shape) != self.lead_shape:
                    raise ValueError(f"`grad_output` must have the loss's shape "
                                     f"{self.lead_shape} for reduction='none', "
                                     f"got {tuple(go.shape)}")
                go = xp.reshape(go, (-1,))
                args["grad_row_scale"] = go if self.sample_weight is None else go * self.sample_weight
        else:
            go = 1.0 if grad_output is None else _scalar(grad_output, "grad_output")
            if self.reduction == "mean":
                # NaN or inf where torch's own division by a zero weight gives
                # them, unless the caller asked for 0.
                den = self.divisor
                go = (go / den if den else 0.0 if self.empty == "zero"
                      else math.nan if go == 0 else math.copysign(math.inf, go))
            args["grad_scale"] = go
        if out is not None:
            if not _dispatch.writeable(out):
                raise ValueError(f"`out` must be a writable array; {type(out).__name__} "
                                 f"arrays of this kind are read-only")
            if tuple(out.shape) != tuple(input.shape) or out.dtype != input.dtype:
                raise ValueError(f"`out` must have the input's shape {tuple(input.shape)} and "
                                 f"dtype {input.dtype}, got {tuple(out.shape)} and {out.dtype}")
            args["out"] = _rows_view(xp, out, self.axis)
        return args


def weighted_count(xp, sample_weight, keep, weight, target):
    """The mean's divisor with sample weights: the sum over kept rows of
    ``sample_weight * weight[target]`` (of `sample_weight` without targets)."""
    if keep is None:
        total = xp.sum(sample_weight)
    else:
        v = sample_weight
        if weight is not None:
            v = v * xp.take(weight, xp.where(keep, target, xp.zeros_like(target)))
        total = xp.sum(xp.where(keep, v, xp.zeros_like(v)))
    try:
        return float(total)
    except TypeError:  # pyopencl's 0-d arrays have no __float__
        return float(_dispatch.to_numpy(total))


def _scalar(value, what):
    """A Python float from a number or a one-element array."""
    if isinstance(value, (str, bytes)):  # float() would parse them
        raise TypeError(f"`{what}` must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{what}` must be a number or a one-element array, "
                        f"got {value!r}") from None


def _rows_view(xp, a, axis):
    """A (rows, classes) view sharing `a`'s memory, or None if only a copy gives one."""
    if axis != a.ndim - 1:
        return None
    try:
        return xp.reshape(a, (-1, a.shape[-1]), copy=False)
    except (ValueError, RuntimeError, NotImplementedError):
        return None


def nll_loss(input: Array, target: Array, weight: Array | None = None, ignore_index: int = -100,
             reduction: Reduction = "mean", *, axis: int | None = None,
             n_threads: int | None = None, backend: Backend = "auto") -> Array:
    """Negative log-likelihood of log-probabilities, as ``torch.nn.functional.nll_loss``.

    Parameters
    ----------
    input : array
        Log-probabilities, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
    target : array
        Class indices of shape `input` without the class axis.
    weight : array, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, default -100
        Target value that contributes neither loss nor weight.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the summed weight of the non-ignored targets.
    axis : int, optional
        The class axis; default torch's (1, or 0 for 1-D input).
    n_threads, backend
        Accepted and validated as for `cross_entropy`, so that the two calls
        are interchangeable; the work is one gather per element, done in the
        caller's namespace whichever engine is named.

    Returns
    -------
    array
        ``-weight[target] * input[target]``, reduced, in `input`'s namespace.
    """
    if _dispatch.is_dask(input):
        from . import _dask
        return _dask.nll_loss(input, target, weight, ignore_index, reduction, axis=axis,
                              n_threads=n_threads, backend=backend)
    ignore_index = _ignore_index(ignore_index)
    xp, x, _, lead_shape, w, _, engine = _prepare(
        input, target, weight, reduction, axis, n_threads, backend)
    t = _class_targets(xp, target, lead_shape, x.shape[1])
    _, denominator = engine.targets(xp, RowJob(x, target=t, weight=w, ignore_index=ignore_index))
    keep = t != ignore_index
    safe = xp.where(keep, t, xp.zeros_like(t))
    picked = -xp.take_along_axis(x, safe[:, None], axis=1)[:, 0]
    if w is not None:
        picked = picked * xp.take(w, safe)
    loss = xp.where(keep, picked, xp.zeros_like(picked))
    return xp.astype(_reduce(xp, loss, reduction, lead_shape, denominator), input.dtype,
                     copy=False)


def _normalize(x, axis, out_kind, n_threads, backend):
    """log_softmax / softmax along `axis` through the engine's second pass, and the
    normalized axis."""
    xp = _dispatch.namespace(x=x)
    n_threads = _n_threads(n_threads)
    check_floating(xp, x, "x")
    ax = _class_axis(x.ndim, -1 if axis is None else axis)
    rows, lead_shape = _as_rows(xp, x, ax)
    engine = _dispatch.engine_for(xp, x, backend)
    if rows.shape[1] == 0:
        return xp.empty_like(x), ax
    _, _, out = engine.rows(xp, RowJob(rows, want_loss=False, out_kind=out_kind,
                                       n_threads=n_threads))
    return _from_rows(xp, out, lead_shape, ax), ax


_NORMALIZE_DOC = """{summary}

    Parameters
    ----------
    x : array
        Floating-point input of any shape.
    axis : int, default -1
        The axis to normalize over.
    n_threads : int, optional
        Threads of the C core; default all cores.
    backend : {{"auto", "cpu", "opencl", "generic"}}, default "auto"
        Engine, as for `cross_entropy`.

    Returns
    -------
    array
        Same namespace, shape and dtype as `x`{returns}.
    """


def log_softmax(x: Array, axis: int = -1, *, n_threads: int | None = None,
                backend: Backend = "auto") -> Array:
    if _dispatch.is_dask(x):
        from . import _dask
        return _dask.log_softmax(x, axis, n_threads=n_threads, backend=backend)
    if tracks_grad(x):
        from . import _autograd
        return _autograd.normalize(
            x, lambda a: _normalize(a, axis, "log_softmax", n_threads, backend), "log_softmax")
    return _normalize(x, axis, "log_softmax", n_threads, backend)[0]


def softmax(x: Array, axis: int = -1, *, n_threads: int | None = None,
            backend: Backend = "auto") -> Array:
    if _dispatch.is_dask(x):
        from . import _dask
        return _dask.softmax(x, axis, n_threads=n_threads, backend=backend)
    if tracks_grad(x):
        from . import _autograd
        return _autograd.normalize(
            x, lambda a: _normalize(a, axis, "softmax", n_threads, backend), "softmax")
    return _normalize(x, axis, "softmax", n_threads, backend)[0]


log_softmax.__doc__ = _NORMALIZE_DOC.format(
    summary="Logarithm of softmax along `axis`: ``(x - max) - log(sum(exp(x - max)))``.",
    returns="")
softmax.__doc__ = _NORMALIZE_DOC.format(
    summary="Softmax along `axis`, without overflow for any finite input.",
    returns="; sums to one along `axis`")


def logsumexp(x: Array, axis: int = -1, keepdims: bool = False, *,
              n_threads: int | None = None, backend: Backend = "auto") -> Array:
    """``log(sum(exp(x), axis))`` without overflow, as ``scipy.special.logsumexp``.

    Parameters
    ----------
    x : array
        Floating-point input of any shape (at least one dimension).
    axis : int, default -1
        The axis to reduce.
    keepdims : bool, default False
        Keep the reduced axis with length one.
    n_threads : int, optional
        Threads of the C core; default all cores.
    backend : {"auto", "cpu", "opencl", "generic"}, default "auto"
        Engine, as for `cross_entropy`.

    Returns
    -------
    array
        Same namespace and dtype as `x`, the shape of `x` without `axis`.
    """
    if _dispatch.is_dask(x):
        from . import _dask
        return _dask.logsumexp(x, axis, keepdims, n_threads=n_threads, backend=backend)
    if tracks_grad(x):
        from . import _autograd
        return _autograd.logsumexp(
            x, lambda a: _logsumexp(a, axis, keepdims, n_threads, backend), keepdims)
    return _logsumexp(x, axis, keepdims, n_threads, backend)[0]


def _logsumexp(x, axis, keepdims, n_threads, backend):
    """`logsumexp` and the reduced axis."""
    xp = _dispatch.namespace(x=x)
    n_threads = _n_threads(n_threads)
    check_floating(xp, x, "x")
    ax = _class_axis(x.ndim, axis)
    rows, lead_shape = _as_rows(xp, x, ax)
    engine = _dispatch.engine_for(xp, x, backend)
    if rows.shape[1] == 0:  # the log of an empty sum, as scipy.special.logsumexp
        lse = xp.reshape(xp.full_like(xp.sum(rows, axis=1), -math.inf), lead_shape)
    else:
        _, lse, _ = engine.rows(xp, RowJob(rows, want_loss=False, want_lse=True,
                                           n_threads=n_threads))
        lse = xp.reshape(xp.astype(lse, x.dtype, copy=False), lead_shape)
    return (xp.expand_dims(lse, axis=ax) if keepdims else lse), ax
