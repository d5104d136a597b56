"""Dask arrays: each chunk through xentc's own call, the reductions exact.

An API-layer module: `cross_entropy`, `cross_entropy_with_grad`, `nll_loss`,
`logsumexp`, `log_softmax`, `softmax` and `log_loss` hand Dask arrays here.
Each chunk of rows is a NumPy (or other) array that the ordinary call
computes with its engine; what crosses chunks is only per-row results and
per-chunk sums, combined exactly (sums of weighted losses over sums of
weights, never a mean of means). Results stay lazy Dask arrays (the
gradient chunked as the logits); `log_loss` computes its graph and returns a
float, as scikit-learn does.

Chunks that split the class axis give partial row states (``_partial``):
each (rows, classes) chunk its rows' max, sum of exps, target logit and
linear sums, combined exactly per row once all of a row's chunks are done;
the gradient and the normalized chunks then come from each row's whole
state. `nll_loss` needs no state: a row's picked entry lies in one chunk.
"""
import math

import numpy as np

from . import _dispatch


def _two_d(x, what):
    if x.ndim != 2:
        raise ValueError(f"`{what}` must be 2-D (rows, classes) for Dask arrays, "
                         f"got {x.ndim} dimensions")


def _one_class_chunk(x, what):
    _two_d(x, what)
    if len(x.chunks[1]) != 1:
        raise NotImplementedError(
            f"`{what}` is split along its classes ({len(x.chunks[1])} chunks); xentc takes "
            f"Dask arrays chunked by rows only for now: {what}.rechunk({{1: -1}})")


def _rows_like(a, x, what):
    """`a` (None, a Dask or NumPy array of x's rows) chunked as x's rows."""
    import dask.array as da

    if a is None:
        return None
    a = a if _dispatch.is_dask(a) else da.from_array(np.asarray(a), chunks=-1)
    if a.shape[0] != x.shape[0]:
        raise ValueError(f"`{what}` must have {x.shape[0]} rows like `input`, "
                         f"got shape {a.shape}")
    return a.rechunk((x.chunks[0],) + tuple((n,) for n in a.shape[1:]))


def _col(a):
    """`a` with rows on its first axis as 2-D: map_blocks aligns arrays' blocks from
    their last axis, so 1-D row vectors become (rows, 1) beside (rows, classes)."""
    return None if a is None else (a if a.ndim == 2 else a[:, None])


def _checked_call(input, target, weight, sample_weight, axis, reduction, normalizer, empty, kw):
    """(target, sample_weight, weight, soft): the arrays chunked as the logits' rows,
    every argument checked once, on no rows, by the call each chunk makes."""
    from . import _api

    if axis not in (None, 1, -1):
        raise ValueError(f"`axis` must be the classes' (1) for Dask arrays, got {axis}")
    _two_d(input, "input")
    soft = np.issubdtype(target.dtype, np.floating)
    t = _rows_like(target, input, "target")
    if soft:
        t = t.rechunk(input.chunks)
    sw = _rows_like(sample_weight, input, "sample_weight")
    w = None if weight is None else np.asarray(weight)
    _api.cross_entropy(input[:0].compute(), t[:0].compute(), w, reduction=reduction,
                       normalizer=normalizer, empty=empty,
                       sample_weight=None if sw is None else sw[:0].compute(), **kw)
    return t, sw, w, soft


def _divisor(t, w, sw, soft, ignore_index):
    """The mean's divisor as a lazy 0-d array: per chunk of rows, its share as the
    ordinary call sums it (`weighted_count`), summed."""
    import dask.array as da

    from . import _api

    def kept(tb, swb=None):
        weights = np.ones(tb.shape[0]) if swb is None else swb[:, 0]
        if soft:
            return np.array([_api.weighted_count(np, weights, None, None, None)])
        tb = tb[:, 0]
        return np.array([_api.weighted_count(np, weights, tb != ignore_index, w, tb)])

    t_rows = _col(t)[:, :1]
    args = (t_rows,) if sw is None else (t_rows, _col(sw))
    return da.map_blocks(kept, *args, drop_axis=1, chunks=((1,) * t_rows.numblocks[0],),
                         dtype=np.float64, meta=np.empty(0)).sum()


def _reduce(rows, reduction, divisor, empty, dtype):
    """Per-row values (a lazy 1-D array) reduced as the ordinary call does, the sums
    in float64, in `dtype`."""
    import dask.array as da

    if reduction == "none":
        return rows.astype(dtype)
    total = rows.sum(dtype=np.float64)
    if reduction == "sum":
        return total.astype(dtype)
    if isinstance(divisor, float):  # the caller's normalizer
        return (total / divisor).astype(dtype)
    fallback = 0.0 if empty == "zero" else np.nan
    return da.where(divisor != 0, total / da.where(divisor != 0, divisor, 1.0),
                    fallback).astype(dtype)


def _per_row(x, t, w, sw, soft, kw, *, want_z, want_lse, g=None):
    """Lazy per-row (loss, z_loss, lse, grad) of `cross_entropy`, None where not
    asked for: loss and z-loss times the sample weights, the gradient (when `g`,
    the rows' gradient scales without the sample weights, is given) of the loss
    rows times g. Rows whose classes are one chunk go through the ordinary call;
    others through partial row states."""
    if len(x.chunks[1]) == 1:
        return _whole_rows(x, t, w, sw, soft, kw, want_z, want_lse, g)
    return _split_rows(x, t, w, sw, soft, kw, want_z, want_lse, g)


def _whole_rows(x, t, w, sw, soft, kw, want_z, want_lse, g):
    import dask.array as da

    from . import _api

    rows = [a for a in (sw, g) if a is not None]
    grad = g is not None

    def block(xb, tb, *rest):
        it = iter(rest)
        swb = next(it) if sw is not None else None
        common = dict(reduction="none", sample_weight=swb, return_z_loss=want_z,
                      return_lse=want_lse, **kw)
        if grad:
            res = _api.cross_entropy_with_grad(xb, tb, w, grad_output=next(it), **common)
        else:
            res = _api.cross_entropy(xb, tb, w, **common)
            res = res if isinstance(res, tuple) else (res,)
        return tuple(np.asarray(r) for r in res) if len(res) > 1 else np.asarray(res[0])

    outs = ["()"] * (1 + want_z + want_lse) + (["(c)"] if grad else [])
    sig = ",".join(["(c)", "(c)" if soft else "()"] + ["()"] * len(rows)) + "->" + ",".join(outs)
    res = da.apply_gufunc(block, sig, x, t, *rows, output_dtypes=[x.dtype] * len(outs),
                          allow_rechunk=False, vectorize=False)
    res = list(res) if len(outs) > 1 else [res]
    loss = res.pop(0)
    z = res.pop(0) if want_z else None
    lse = res.pop(0) if want_lse else None
    return loss, z, lse, res.pop(0) if grad else None


def _split_rows(x, t, w, sw, soft, kw, want_z, want_lse, g):
    """Rows whose classes span several chunks: each chunk's partial row states,
    their combination per chunk of rows, then each chunk's gradient from it."""
    import dask.array as da

    from . import _api, _partial
    from ._engines import RowJob

    n_classes, n_col = x.shape[1], len(x.chunks[1])
    acc = _api.acc_dtype(np, x.dtype)
    job_kw = dict(ignore_index=kw["ignore_index"], label_smoothing=float(kw["label_smoothing"]))
    job_kw.update(zip(("logit_scale", "softcap", "lse_square_scale"), _api.row_options(
        kw.get("logit_scale", 1.0), kw.get("softcap"), kw.get("lse_square_scale", 0.0))))
    # the rows' gradient scales, sample weights included (`finish`, `block_grad`)
    scale = g if sw is None else (sw if g is None else g * sw)
    ti = "ij" if soft else "i"  # probabilities come in the logits' chunks

    def job_of(tb, sb=None):
        targets = dict(soft=tb) if soft else dict(target=tb)
        return RowJob(None, weight=None if w is None else w.astype(acc), grad_row_scale=sb,
                      **targets, **job_kw)

    def states(xb, tb, cols):
        job = job_of(tb)
        z, _ = _partial.transform(np, job, xb.astype(acc, copy=False))
        return np.stack(_partial.block_state(np, job, z, int(cols[0]), n_classes), axis=1)

    def finished(st, *rest):
        # (rows, 4): loss, lse, alpha, gamma of each row's combined state; finish
        # reads class targets, not probabilities
        rest = list(rest)
        tb = None if soft else rest.pop(0)
        st = st.reshape(st.shape[0], n_col, 5)
        total = _partial.State(*st[:, 0, :].T)
        for k in range(1, n_col):
            total = _partial.combine(np, total, _partial.State(*st[:, k, :].T))
        job = RowJob(None, target=tb, weight=None if w is None else w.astype(acc),
                     grad_row_scale=rest[0] if rest else None, **job_kw)
        return np.stack(_partial.finish(np, job, total), axis=1)

    cols = da.arange(n_classes, chunks=(x.chunks[1],))
    parts = da.blockwise(states, "ij", x, "ij", t, ti, cols, "j", dtype=acc, align_arrays=False,
                         adjust_chunks={"j": (5,) * n_col}, meta=np.empty((0, 0), acc))
    rows = [] if soft else [t, "i"]
    if scale is not None:
        rows += [scale, "i"]
    fin = da.blockwise(finished, "il", parts.rechunk({1: -1}), "ik", *rows, dtype=acc,
                       new_axes={"l": 4}, concatenate=True, meta=np.empty((0, 0), acc))
    loss, lse = fin[:, 0], fin[:, 1]
    z = None
    if want_z:  # 0 on ignored rows, whose lse is 0
        z = job_kw["lse_square_scale"] * lse * lse  # not lse**2: see _api.LossCall.results
        z = z if sw is None else z * sw
    if sw is not None:
        loss = loss * sw
    grad = None
    if g is not None:
        def block_grad(xb, tb, cols, fb, sb):
            job = job_of(tb, sb)
            z_, dz = _partial.transform(np, job, xb.astype(acc, copy=False))
            return _partial.block_grad(np, job, z_, dz, int(cols[0]), n_classes, fb[:, 1],
                                       fb[:, 2], fb[:, 3]).astype(x.dtype, copy=False)

        grad = da.blockwise(block_grad, "ij", x, "ij", t, ti, cols, "j", fin, "il", scale, "i",
                            dtype=x.dtype, align_arrays=False, concatenate=True,
                            meta=np.empty((0, 0), x.dtype))
    return loss, z, lse if want_lse else None, grad


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, axis=None, normalizer=None, empty="nan",
                  sample_weight=None, return_z_loss=False, return_lse=False, **options):
    """`xentc.cross_entropy` of a Dask array of logits (see ``xentc.cross_entropy``):
    lazy results in Dask arrays."""
    kw = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, **options)
    t, sw, w, soft = _checked_call(input, target, weight, sample_weight, axis, reduction,
                                   normalizer, empty, kw)
    loss, z, lse, _ = _per_row(input, t, w, sw, soft, kw, want_z=bool(return_z_loss),
                               want_lse=bool(return_lse))
    divisor = _divisor_of(t, w, sw, soft, ignore_index, reduction, normalizer, empty)
    results = [_reduce(loss, reduction, divisor, empty, input.dtype)]
    if z is not None:
        results.append(_reduce(z, reduction, divisor, empty, input.dtype))
    if lse is not None:
        results.append(lse.astype(input.dtype))
    return results[0] if len(results) == 1 else tuple(results)


def _divisor_of(t, w, sw, soft, ignore_index, reduction, normalizer, empty):
    """What "mean" divides by: the normalizer (a float), else the lazy divisor."""
    from . import _api

    if reduction != "mean":
        return None
    normalizer = _api.mean_options("mean", normalizer, empty)
    return normalizer if normalizer is not None else _divisor(t, w, sw, soft, ignore_index)


def cross_entropy_with_grad(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, grad_output=None, out=None, axis=None,
                            normalizer=None, empty="nan", sample_weight=None,
                            return_z_loss=False, return_lse=False, **options):
    """`xentc.cross_entropy_with_grad` of a Dask array of logits: lazy results, the
    gradient a Dask array chunked as the logits."""
    import dask.array as da

    from . import _api

    if out is not None:
        raise ValueError("`out` is not supported for Dask arrays: their chunks are "
                         "written by Dask; the gradient is returned")
    kw = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, **options)
    t, sw, w, soft = _checked_call(input, target, weight, sample_weight, axis, reduction,
                                   normalizer, empty, kw)
    acc = _api.acc_dtype(np, input.dtype)
    divisor = _divisor_of(t, w, sw, soft, ignore_index, reduction, normalizer, empty)
    if reduction == "none":
        g = (da.ones(input.shape[0], chunks=(input.chunks[0],), dtype=acc)
             if grad_output is None else _rows_like(grad_output, input, "grad_output"))
        if g.ndim != 1:
            raise ValueError(f"`grad_output` must have the loss's shape ({input.shape[0]},) "
                             f"for reduction='none', got {g.shape}")
    else:
        go = 1.0 if grad_output is None else _api._scalar(grad_output, "grad_output")
        if reduction == "mean":  # as the ordinary call: torch's NaN or inf for 0 / 0
            fallback = (0.0 if empty == "zero" else math.nan if go == 0
                        else math.copysign(math.inf, go))
            go = (go / divisor if isinstance(divisor, float) else
                  da.where(divisor != 0, go / da.where(divisor != 0, divisor, 1.0), fallback))
        g = da.ones(input.shape[0], chunks=(input.chunks[0],), dtype=acc) * go
    loss, z, lse, grad = _per_row(input, t, w, sw, soft, kw, want_z=bool(return_z_loss),
                                  want_lse=bool(return_lse), g=g.astype(acc))
    results = [_reduce(loss, reduction, divisor, empty, input.dtype)]
    if z is not None:
        results.append(_reduce(z, reduction, divisor, empty, input.dtype))
    if lse is not None:
        results.append(lse.astype(input.dtype))
    return (*results, grad)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean", *, axis=None,
             **options):
    """`xentc.nll_loss` of a Dask array of log-probabilities: each chunk through the
    ordinary call; a row's picked entry lies in one of its class chunks."""
    import dask.array as da

    from . import _api

    if axis not in (None, 1, -1):
        raise ValueError(f"`axis` must be the classes' (1) for Dask arrays, got {axis}")
    _two_d(input, "input")
    t = _rows_like(target, input, "target")
    w = None if weight is None else np.asarray(weight)
    _api.nll_loss(input[:0].compute(), t[:0].compute(), w, ignore_index, reduction, **options)
    n_classes = input.shape[1]

    def block(xb, tb, cols):
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        kept = tb != ignore_index
        if c0 == 0:  # each row's target checked once, by its first class chunk
            bad = kept & ((tb < 0) | (tb >= n_classes))
            if bad.any():
                raise IndexError(f"`target` value {int(tb[bad][0])} out of range for "
                                 f"{n_classes} classes")
        # targets in other chunks (and ignored ones) become this call's ignored -1
        inside = kept & (tb >= c0) & (tb < c1)
        local = np.where(inside, tb - c0, -1)
        return np.asarray(_api.nll_loss(xb, local, None if w is None else w[c0:c1], -1,
                                        "none", **options), dtype=np.float64)[:, None]

    cols = da.arange(n_classes, chunks=(input.chunks[1],))
    parts = da.blockwise(block, "ij", input, "ij", t, "i", cols, "j", dtype=np.float64,
                         align_arrays=False, adjust_chunks={"j": (1,) * len(input.chunks[1])},
                         meta=np.empty((0, 0)))
    rows = parts.sum(axis=1)
    divisor = (_divisor(t, w, None, False, ignore_index) if reduction == "mean" else None)
    return _reduce(rows, reduction, divisor, "nan", input.dtype)


def _rows_2d(x, axis, what="x"):
    _two_d(x, what)
    if axis not in (1, -1):
        raise ValueError(f"`axis` must be the classes' (1 or -1) for Dask arrays, got {axis}")


def _row_states(x):
    """(rows, 2): each row's max m and sum of exp(x - m) over all its class chunks, in
    float64, from the chunks' partial row states (`_partial`): the normalizers
    stay exact relative to the row's max, as in the ordinary call."""
    import dask.array as da

    from . import _partial
    from ._engines import RowJob

    n_classes, n_col = x.shape[1], len(x.chunks[1])
    plain = RowJob(None)  # no targets, no options: only m and s

    def states(b, cols):
        st = _partial.block_state(np, plain, b.astype(np.float64, copy=False), int(cols[0]),
                                  n_classes)
        return np.stack([st.m, st.s], axis=1)

    def combined(p):
        p = p.reshape(p.shape[0], n_col, 2)
        zero = np.zeros(p.shape[0])
        total = _partial.State(p[:, 0, 0], p[:, 0, 1], zero, zero, zero)
        for k in range(1, n_col):
            total = _partial.combine(np, total,
                                     _partial.State(p[:, k, 0], p[:, k, 1], zero, zero, zero))
        return np.stack([total.m, total.s], axis=1)

    cols = da.arange(n_classes, chunks=(x.chunks[1],))
    parts = da.blockwise(states, "ij", x, "ij", cols, "j", dtype=np.float64, align_arrays=False,
                         adjust_chunks={"j": (2,) * n_col}, meta=np.empty((0, 0)))
    return parts.rechunk({1: -1}).map_blocks(combined, chunks=(x.chunks[0], (2,)),
                                             dtype=np.float64)


def _lse(ms):
    """m + log(s) of `_row_states`' (rows, 2) block, as (rows, 1): -inf for a sum of
    0 (a row of -inf)."""
    with np.errstate(divide="ignore"):
        return ms[:, :1] + np.log(ms[:, 1:])


def logsumexp(x, axis=-1, keepdims=False, **options):
    """`xentc.logsumexp` of a 2-D Dask array along its classes: lazy; class chunks'
    sums combined exactly."""
    from . import _api

    _rows_2d(x, axis)
    if len(x.chunks[1]) == 1:
        lse = x.map_blocks(lambda b: _api.logsumexp(b, axis=1, keepdims=True, **options),
                           chunks=(x.chunks[0], (1,)), dtype=x.dtype)
    else:
        lse = _row_states(x).map_blocks(lambda ms: _lse(ms).astype(x.dtype),
                                        chunks=(x.chunks[0], (1,)), dtype=x.dtype)
    return lse if keepdims else lse[:, 0]


def _normalized(x, axis, kind, options):
    """log_softmax or softmax (`kind`) of a 2-D Dask array: each chunk against its
    rows' max and sum of exps over all their class chunks."""
    import dask.array as da

    from . import _api

    _rows_2d(x, axis)
    if len(x.chunks[1]) == 1:
        fn = getattr(_api, kind)
        return x.map_blocks(lambda b: fn(b, axis=1, **options), dtype=x.dtype)

    def block(b, ms):
        # (x - m) - log(s), exp(x - m) / s; a row without a finite lse (an inf,
        # a NaN, all -inf) is all NaN, as in the ordinary call and torch
        finite = np.isfinite(_lse(ms))
        m, s = np.where(finite, ms[:, :1], 0.0), np.where(finite, ms[:, 1:], 1.0)
        d = b.astype(np.float64, copy=False) - m
        with np.errstate(invalid="ignore"):  # inf - inf in the rows made NaN here
            r = d - np.log(s) if kind == "log_softmax" else np.exp(d) / s
        return np.where(finite, r, np.nan).astype(b.dtype, copy=False)

    return da.blockwise(block, "ij", x, "ij", _row_states(x), "ik", dtype=x.dtype,
                        align_arrays=False, concatenate=True, meta=np.empty((0, 0), x.dtype))


def log_softmax(x, axis=-1, **options):
    """`xentc.log_softmax` of a 2-D Dask array along its classes (lazy)."""
    return _normalized(x, axis, "log_softmax", options)


def softmax(x, axis=-1, **options):
    """`xentc.softmax` of a 2-D Dask array along its classes (lazy)."""
    return _normalized(x, axis, "softmax", options)


def log_loss(y_true, y_proba, *, normalize=True, sample_weight=None, labels=None, **options):
    """`xentc.log_loss` of Dask arrays: the sum of each chunk's weighted loss over
    the sum of the weights; computes the graph and returns a float."""
    import dask
    import dask.array as da

    from . import metrics

    _one_class_chunk(y_proba, "y_proba") if y_proba.ndim == 2 else None
    y = _rows_like(y_true, y_proba, "y_true")
    sw = _rows_like(sample_weight, y_proba, "sample_weight")
    if labels is None:  # every chunk must see every label: computed once, first
        labels = np.unique(np.asarray(y.compute()))

    flat_y, flat_p = y.ndim == 1, y_proba.ndim == 1

    def chunk_sum(yb, pb, swb=None):
        swb = None if swb is None else swb[:, 0]
        total = metrics.log_loss(yb[:, 0] if flat_y else yb, pb[:, 0] if flat_p else pb,
                                 normalize=False, sample_weight=swb, labels=labels, **options)
        weight = float(len(yb)) if swb is None else float(np.sum(swb))
        return np.array([[total, weight]])

    p2 = _col(y_proba)
    args = [_col(y).rechunk((p2.chunks[0], -1)), p2]
    if sw is not None:
        args.append(_col(sw))
    parts = da.map_blocks(chunk_sum, *args, chunks=((1,) * p2.numblocks[0], (2,)),
                          dtype=np.float64, meta=np.empty((0, 0)))
    total, weight = dask.compute(parts[:, 0].sum(), parts[:, 1].sum())
    return float(total / weight) if normalize else float(total)
