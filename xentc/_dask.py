"""Dask arrays: each chunk of rows through xentc's own call, the reductions exact.

An API-layer module: `xentc.cross_entropy` and `xentc.log_loss` hand Dask
arrays here. Each chunk of rows is a NumPy (or other) array that the
ordinary call computes with its engine; what crosses chunks is only per-row
results and per-chunk sums, combined exactly (sums of weighted losses over
sums of weights, never a mean of means). Results of `cross_entropy` stay lazy
Dask arrays; `log_loss` computes its graph and returns a float, as
scikit-learn does.

Chunks that split the class axis give partial row states (``_partial``):
each (rows, classes) chunk its rows' max, sum of exps, target logit and
linear sums, combined exactly per row once all of a row's chunks are done.
"""
import numpy as np


def is_dask(a):
    """Whether `a` is a Dask array (without importing dask)."""
    return type(a).__module__.split(".")[0] == "dask"


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
    a = a if is_dask(a) else da.from_array(np.asarray(a), chunks=-1)
    if a.shape[0] != x.shape[0]:
        raise ValueError(f"`{what}` must have {x.shape[0]} rows like `input`, "
                         f"got shape {a.shape}")
    return a.rechunk((x.chunks[0],) + tuple((n,) for n in a.shape[1:]))


def _col(a):
    """`a` with rows on its first axis as 2-D: map_blocks aligns arrays' blocks from
    their last axis, so 1-D row vectors become (rows, 1) beside (rows, classes)."""
    return None if a is None else (a if a.ndim == 2 else a[:, None])


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, axis=None, normalizer=None, empty="nan",
                  sample_weight=None, return_z_loss=False, return_lse=False, **options):
    """`xentc.cross_entropy` of a Dask array of logits (see ``xentc.cross_entropy``):
    lazy results in Dask arrays."""
    import dask.array as da

    from . import _api

    if return_z_loss or return_lse:
        raise NotImplementedError("return_z_loss and return_lse are not available for "
                                  "Dask arrays yet")
    if axis not in (None, 1, -1):
        raise ValueError(f"`axis` must be the classes' (1) for Dask arrays, got {axis}")
    _two_d(input, "input")
    soft = np.issubdtype(target.dtype, np.floating)
    t = _rows_like(target, input, "target")
    if soft:
        t = t.rechunk(input.chunks)
    sw = _rows_like(sample_weight, input, "sample_weight")
    w = None if weight is None else np.asarray(weight)
    kw = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, **options)
    # Every argument checked once, on no rows, by the call each chunk makes.
    _api.cross_entropy(input[:0].compute(), t[:0].compute(), w, reduction=reduction,
                       normalizer=normalizer, empty=empty,
                       sample_weight=None if sw is None else sw[:0].compute(), **kw)

    def rows(xb, tb, swb=None):
        # Each chunk: the ordinary call, per row (its checks run per chunk).
        return np.asarray(_api.cross_entropy(
            xb, tb if soft else tb[:, 0], w, reduction="none",
            sample_weight=None if swb is None else swb[:, 0], **kw))

    def kept(tb, swb=None):
        # Each chunk's share of the mean's divisor, as the ordinary call sums it.
        weights = np.ones(tb.shape[0]) if swb is None else swb[:, 0]
        if soft:
            return np.array([_api.weighted_count(np, weights, None, None, None)])
        tb = tb[:, 0]
        return np.array([_api.weighted_count(np, weights, tb != ignore_index, w, tb)])

    t, sw = _col(t), _col(sw)
    acc = _api.acc_dtype(np, input.dtype)
    if len(input.chunks[1]) == 1:
        args = (input, t) if sw is None else (input, t, sw)
        loss = da.map_blocks(rows, *args, drop_axis=1, dtype=acc, meta=np.empty(0, acc))
    else:
        loss = _split_rows(input, t, w, sw, soft, acc, dict(kw, empty=empty))
    if reduction == "none":
        return loss.astype(input.dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.astype(input.dtype)
    if normalizer is not None:
        return (total / _api.mean_options("mean", normalizer, empty)).astype(input.dtype)
    _api.mean_options("mean", None, empty)
    t_rows = t[:, :1]
    den = da.map_blocks(kept, *((t_rows,) if sw is None else (t_rows, sw)), drop_axis=1,
                        chunks=((1,) * t_rows.numblocks[0],), dtype=np.float64,
                        meta=np.empty(0)).sum()
    fallback = 0.0 if empty == "zero" else np.nan
    return da.where(den != 0, total / da.where(den != 0, den, 1.0), fallback).astype(input.dtype)


def _split_rows(x, t, w, sw, soft, acc, kw):
    """Per-row losses of rows whose classes span several chunks: each chunk's
    partial row states, then per chunk of rows their combination."""
    import dask.array as da

    from . import _api, _partial
    from ._engines import RowJob

    n_classes, n_col = x.shape[1], len(x.chunks[1])
    job_kw = dict(ignore_index=kw["ignore_index"], label_smoothing=float(kw["label_smoothing"]))
    job_kw.update(zip(("logit_scale", "softcap", "lse_square_scale"), _api.row_options(
        kw.get("logit_scale", 1.0), kw.get("softcap"), kw.get("lse_square_scale", 0.0))))

    def job_of(tb):
        targets = dict(soft=tb) if soft else dict(target=tb[:, 0])
        return RowJob(None, weight=None if w is None else w.astype(acc), **targets, **job_kw)

    def states(xb, tb, block_info=None):
        c0 = block_info[0]["array-location"][1][0]
        job = job_of(tb)
        z, _ = _partial.transform(np, job, xb.astype(acc, copy=False))
        return np.stack(_partial.block_state(np, job, z, c0, n_classes), axis=1)

    def losses(st, tb):
        st = st.reshape(st.shape[0], n_col, 5)
        total = _partial.State(*st[:, 0, :].T)
        for k in range(1, n_col):
            total = _partial.combine(np, total, _partial.State(*st[:, k, :].T))
        return _partial.finish(np, job_of(tb), total)[0]

    parts = da.map_blocks(states, x, t, chunks=(x.chunks[0], (5,) * n_col), dtype=acc,
                          meta=np.empty((0, 0), acc))
    loss = da.map_blocks(losses, parts.rechunk({1: -1}), t[:, :1],
                         drop_axis=1, dtype=acc, meta=np.empty(0, acc))
    return loss if sw is None else loss * sw[:, 0]


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
