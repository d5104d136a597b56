"""cross_entropy / nll_loss semantics against the float64 reference and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentc
from reference import (
    make_case,
    REDUCTIONS,
    assert_within,
    ce_expected,
    class_axis,
    class_count_case,
    log_softmax_ref,
    make_logits,
    make_soft_targets,
    make_targets,
    make_weight,
    nll_expected,
    unaligned_copy,
)

SHAPES = [(7,), (6, 7), (4, 7, 3), (3, 7, 2, 3)]
SMOOTHINGS = [0.0, 0.1, 1.0]
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def shape_id(shape):
    return "x".join(map(str, shape))


def target_shape(shape, axis=None):
    ax = class_axis(len(shape), axis)
    return tuple(s for i, s in enumerate(shape) if i != ax)


# ---------------------------------------------------------------------------
# torch oracle
# ---------------------------------------------------------------------------


def _torch_layout(a, axis, ndim):
    """Contiguous torch tensor with the class axis where torch expects it."""
    ax = class_axis(ndim, axis)
    tax = 0 if ndim == 1 else 1
    return torch.from_numpy(np.array(np.moveaxis(np.asarray(a), ax, tax), copy=True))


def torch_ce(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, axis=None):
    x = np.asarray(x)
    target = np.asarray(target)
    tx = _torch_layout(x, axis, x.ndim)
    if target.dtype.kind == "f":
        tt = _torch_layout(target, axis, x.ndim)
    else:
        tt = torch.from_numpy(target.astype(np.int64))
    tw = None if weight is None else torch.from_numpy(np.array(weight, dtype=x.dtype))
    out = F.cross_entropy(
        tx, tt, weight=tw, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    return out.numpy()


def torch_nll(x, target, weight=None, ignore_index=-100, reduction="mean", axis=None):
    x = np.asarray(x)
    tx = _torch_layout(x, axis, x.ndim)
    tt = torch.from_numpy(np.asarray(target).astype(np.int64))
    tw = None if weight is None else torch.from_numpy(np.array(weight, dtype=x.dtype))
    return F.nll_loss(tx, tt, weight=tw, ignore_index=ignore_index, reduction=reduction).numpy()


# ---------------------------------------------------------------------------
# result checks
# ---------------------------------------------------------------------------


def check_result(got, want, tol, dtype, what="result"):
    """Type, dtype, shape and value of a library result."""
    assert isinstance(got, (np.ndarray, np.generic)), f"{what}: got {type(got)!r}, want a NumPy result"
    assert np.asarray(got).dtype == np.dtype(dtype), f"{what}: dtype {np.asarray(got).dtype} != {np.dtype(dtype)}"
    assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != {np.shape(want)}"
    assert_within(got, want, tol, what)


def check_ce(x, target, backend, dtype, torch_too=True, **kw):
    """Run cross_entropy and compare it with the reference (and torch)."""
    got = xentc.cross_entropy(x, target, backend=backend, **kw)
    want, tol = ce_expected(x, target, dtype, **kw)
    check_result(got, want, tol, dtype, "vs reference")
    if torch_too:
        assert_within(got, torch_ce(x, target, **kw), tol, "vs torch")
    return got


# ---------------------------------------------------------------------------
# documented values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction, expected",
    [("none", [5.6389861, 4.9593244]), ("sum", 10.5983105), ("mean", 1.0598310)],
)
def test_documented_weighted_values(reduction, expected, backend):
    x = np.array([[0.2, 0.3, 0.5], [0.5, 0.2, 0.3]], np.float32)
    y = np.array([2, 1])
    w = np.array([2.0, 4.0, 6.0], np.float32)
    got = xentc.cross_entropy(x, y, weight=w, reduction=reduction, backend=backend)
    assert np.asarray(got).dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # positional arguments follow torch's order
    got_pos = xentc.cross_entropy(x, y, w, -100, reduction, 0.0, backend=backend)
    np.testing.assert_array_equal(got_pos, got)


def test_documented_label_smoothing_value(backend):
    x = np.array([[1.0, 2.0], [3.0, 0.4]], np.float32)
    y = np.array([-100, 1])
    w = np.array([0.2, 0.3], np.float32)
    got = xentc.cross_entropy(x, y, weight=w, label_smoothing=0.1, backend=backend)
    assert np.asarray(got).dtype == np.float32
    assert np.ndim(got) == 0
    np.testing.assert_allclose(got, 2.5404506, rtol=1e-6)


# ---------------------------------------------------------------------------
# class-index targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("ignore", [None, -100, 3], ids=["no_ignored", "ignored_default", "ignored_class3"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_class_targets(shape, weighted, ignore, smoothing, reduction, dtype, backend, rng):
    n_classes = shape[class_axis(len(shape))]
    x = make_logits(rng, shape, dtype)
    t = make_targets(rng, target_shape(shape), n_classes, ignore_index=ignore)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    check_ce(
        x,
        t,
        backend,
        dtype,
        weight=w,
        ignore_index=-100 if ignore is None else ignore,
        reduction=reduction,
        label_smoothing=smoothing,
    )


def test_default_arguments_are_torchs(backend, rng):
    x = make_logits(rng, (5, 4, 3), np.float64)
    t = make_targets(rng, (5, 3), 4, ignore_index=-100)
    got = xentc.cross_entropy(x, t, backend=backend)
    explicit = xentc.cross_entropy(
        x, t, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, axis=1, backend=backend
    )
    np.testing.assert_array_equal(got, explicit)
    np.testing.assert_allclose(got, torch_ce(x, t), rtol=1e-12)


@pytest.mark.parametrize(
    "weight",
    [[0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 0.5, -0.25], [0.0, 1.0, 0.0, 1.0, 0.0]],
    ids=["all_zero", "negative", "some_zero"],
)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_unusual_weights(weight, smoothing, dtype, backend, rng):
    """Zero and negative weights are allowed (torch); a zero weighted mean is nan."""
    x = make_logits(rng, (8, 5), dtype)
    t = np.array([0, 2, 4, 0, 2, 4, 0, -100])
    w = np.array(weight, dtype)
    for reduction in REDUCTIONS:
        check_ce(x, t, backend, dtype, weight=w, reduction=reduction, label_smoothing=smoothing)


def test_zero_dim_target_for_1d_input(backend, dtype):
    x = np.array([0.5, -1.0, 2.0], dtype)
    got = xentc.cross_entropy(x, np.array(2), reduction="none", backend=backend)
    assert np.shape(got) == ()
    assert np.asarray(got).dtype == dtype
    np.testing.assert_allclose(got, torch_ce(x, np.array(2), reduction="none"), rtol=1e-6)


@pytest.mark.parametrize("tdtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_target_dtypes(tdtype, dtype, backend, rng):
    n_classes = 300  # > 255, so uint8 255 is a valid class and must not wrap
    x = make_logits(rng, (12, n_classes), dtype)
    top = min(n_classes, np.iinfo(tdtype).max + 1)
    t = rng.integers(0, top, size=12)
    t[0] = top - 1
    signed = np.issubdtype(tdtype, np.signedinteger)
    ignore_index = -100 if signed else 5
    t[1] = ignore_index
    t = t.astype(tdtype)
    for reduction in REDUCTIONS:
        check_ce(x, t, backend, dtype, reduction=reduction, ignore_index=ignore_index, label_smoothing=0.1)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 511, 512, 513,
                                       1000, 1023, 1024, 1025, 2047, 2048, 2049, 5000])
@pytest.mark.parametrize("variant", ["plain", "smoothed_weighted", "soft"])
def test_class_counts(n_classes, variant, dtype, backend, rng):
    """Odd sizes exercise vector tails and block boundaries."""
    x, t, kw = class_count_case(rng, n_classes, variant, dtype)
    for reduction in REDUCTIONS:
        check_ce(x, t, backend, dtype, torch_too=False, reduction=reduction, **kw)


# ---------------------------------------------------------------------------
# soft (class-probability) targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_soft_targets(shape, weighted, smoothing, reduction, dtype, backend, rng):
    n_classes = shape[class_axis(len(shape))]
    x = make_logits(rng, shape, dtype)
    q = make_soft_targets(rng, shape, dtype)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    check_ce(x, q, backend, dtype, weight=w, reduction=reduction, label_smoothing=smoothing)


def test_soft_targets_need_not_be_normalised(dtype, backend, rng):
    x = make_logits(rng, (5, 6), dtype)
    q = rng.uniform(-0.5, 2.0, size=(5, 6)).astype(dtype)
    for reduction in REDUCTIONS:
        check_ce(x, q, backend, dtype, reduction=reduction, label_smoothing=0.3)


# ---------------------------------------------------------------------------
# class axis
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 2, 0, -3, 1, -2])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_axis(axis, soft, reduction, dtype, backend, rng):
    shape = (2, 5, 11)
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    got = check_ce(x, t, backend, dtype, weight=w, reduction=reduction, label_smoothing=0.1, axis=axis, **kw)
    if reduction == "none":
        assert np.shape(got) == target_shape(shape, axis)


def test_axis_last_for_language_model_logits(dtype, backend, rng):
    """(B, T, V) logits with (B, T) targets via axis=-1."""
    x = make_logits(rng, (3, 4, 1031), dtype)
    t = make_targets(rng, (3, 4), 1031, ignore_index=-100)
    got = check_ce(x, t, backend, dtype, reduction="none", axis=-1)
    assert np.shape(got) == (3, 4)
    flat = xentc.cross_entropy(x.reshape(12, 1031), t.reshape(12), reduction="none", backend=backend)
    np.testing.assert_allclose(np.asarray(got).reshape(12), flat, rtol=4 * np.finfo(dtype).eps)


# ---------------------------------------------------------------------------
# memory layouts
# ---------------------------------------------------------------------------

LAYOUTS = {
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "fortran": np.asfortranarray,
    "every_other_class": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "every_other_row": lambda a: np.repeat(a, 2, axis=0)[::2],
    "reversed_rows": lambda a: a[::-1].copy()[::-1],
    "reversed_classes": lambda a: a[:, ::-1].copy()[:, ::-1],
    "reversed_both": lambda a: a[::-1, ::-1].copy()[::-1, ::-1],
    "offset_slice": lambda a: np.pad(a, ((1, 0), (3, 2)))[1:, 3:-2],
}


@pytest.mark.parametrize("n_classes", [1, 10, 37])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_non_contiguous_inputs(layout, soft, n_classes, dtype, backend, rng):
    n, c = 75, n_classes  # narrow rows: a batch of lanes, a group, a tail
    x0 = make_logits(rng, (n, c), dtype)
    w0 = make_weight(rng, c, dtype)
    x = LAYOUTS[layout](x0)
    assert np.array_equal(x, x0)
    assert x.strides != x0.strides or c == 1  # one class: some layouts coincide
    w = w0.repeat(2)[::2] if layout != "reversed_classes" else w0[::-1].copy()[::-1]
    if soft:
        t = LAYOUTS[layout](make_soft_targets(rng, (n, c), dtype))
        kw = {}
    else:
        t = make_targets(rng, (2 * n,), c, ignore_index=-100)[::2]  # strided targets
        kw = dict(ignore_index=-100)
    for reduction in REDUCTIONS:
        for smoothing in (0.0, 0.1):
            got = check_ce(x, t, backend, dtype, weight=w, reduction=reduction,
                           label_smoothing=smoothing, **kw)
            contiguous = xentc.cross_entropy(x0, np.ascontiguousarray(t), weight=w0,
                                             reduction=reduction, label_smoothing=smoothing,
                                             backend=backend, **kw)
            np.testing.assert_allclose(got, contiguous, rtol=4 * np.finfo(dtype).eps)


def test_non_contiguous_kdim_input(dtype, backend, rng):
    # (N, d, C) storage viewed as (N, C, d): the class axis is strided.
    base = make_logits(rng, (4, 6, 13), dtype)
    x = base.transpose(0, 2, 1)
    t = make_targets(rng, (4, 6), 13, ignore_index=-100)
    for reduction in REDUCTIONS:
        check_ce(x, t, backend, dtype, reduction=reduction, weight=make_weight(rng, 13, dtype))


@pytest.mark.parametrize("offset", [1, 2, 4, 8, 12])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_unaligned_inputs(offset, soft, dtype, backend, rng):
    n, c = 7, 1029
    x = unaligned_copy(make_logits(rng, (n, c), dtype), offset)
    w = unaligned_copy(make_weight(rng, c, dtype), offset)
    if soft:
        t = unaligned_copy(make_soft_targets(rng, (n, c), dtype), offset)
        kw = {}
    else:
        t = unaligned_copy(make_targets(rng, (n,), c, ignore_index=-100), offset)
        kw = dict(ignore_index=-100)
    for reduction in REDUCTIONS:
        check_ce(x, t, backend, dtype, weight=w, reduction=reduction, label_smoothing=0.1, **kw)


def test_read_only_inputs(dtype, backend, rng):
    x = make_logits(rng, (6, 10), dtype)
    t = make_targets(rng, (6,), 10, ignore_index=-100)
    q = make_soft_targets(rng, (6, 10), dtype)
    w = make_weight(rng, 10, dtype)
    for a in (x, t, q, w):
        a.setflags(write=False)
    check_ce(x, t, backend, dtype, weight=w, reduction="none", label_smoothing=0.1)
    check_ce(x, q, backend, dtype, weight=w, reduction="mean")
    want = nll_expected(x, t, dtype, weight=w)[0]
    np.testing.assert_allclose(xentc.nll_loss(x, t, weight=w, backend=backend), want, rtol=1e-5)


def test_inputs_are_not_modified(dtype, backend, rng):
    x = make_logits(rng, (6, 10), dtype)
    t = make_targets(rng, (6,), 10, ignore_index=-100)
    q = make_soft_targets(rng, (6, 10), dtype)
    w = make_weight(rng, 10, dtype)
    saved = [a.copy() for a in (x, t, q, w)]
    for reduction in REDUCTIONS:
        xentc.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.2, backend=backend)
        xentc.cross_entropy(x, q, w, reduction=reduction, label_smoothing=0.2, backend=backend)
        xentc.nll_loss(x, t, w, reduction=reduction, backend=backend)
    for fn in (xentc.log_softmax, xentc.softmax, xentc.logsumexp):
        out = fn(x, backend=backend)
        assert not np.shares_memory(out, x)
    for a, b in zip((x, t, q, w), saved):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# empty batches (torch: sum -> 0, mean -> nan)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 5), (2, 5, 0), (0, 5, 3)], ids=shape_id)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(shape, soft, reduction, dtype, backend):
    x = np.zeros(shape, dtype)
    t = np.zeros(shape, dtype) if soft else np.zeros(target_shape(shape), np.int64)
    got = xentc.cross_entropy(x, t, reduction=reduction, backend=backend)
    want = torch_ce(x, t, reduction=reduction)
    check_result(got, want, 0.0, dtype)


# ---------------------------------------------------------------------------
# non-finite values, compared with torch (nan == nan)
# ---------------------------------------------------------------------------

INF = np.inf
INF_ROWS = {
    "neg_inf_logit": ([1.0, -INF, 2.0, 0.5], 0),
    "target_on_neg_inf": ([1.0, -INF, 2.0, 0.5], 1),
    "pos_inf_logit": ([1.0, INF, 2.0, 0.5], 0),
    "target_on_pos_inf": ([1.0, INF, 2.0, 0.5], 1),
    "two_pos_inf": ([INF, INF, 2.0, 0.5], 0),
    "pos_and_neg_inf": ([INF, -INF, 2.0, 0.5], 1),
    "all_neg_inf": ([-INF, -INF, -INF, -INF], 2),
    "all_pos_inf": ([INF, INF, INF, INF], 2),
    "nan_logit": ([1.0, np.nan, 2.0, 0.5], 0),
    "ignored_inf_row": ([INF, -INF, 0.0, 1.0], -100),
    "ignored_nan_row": ([np.nan, 1.0, 0.0, 1.0], -100),
}
NORMAL_ROW = ([0.1, 0.2, 0.3, 0.4], 3)


def _check_every_reduction_against_torch(x, t, w, smoothing, dtype, backend, label):
    eps = np.finfo(dtype).eps
    for reduction in REDUCTIONS:
        kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
        got = xentc.cross_entropy(x, t, backend=backend, **kw)
        want = torch_ce(x, t, **kw)
        check_result(got, want, 64 * eps * (1.0 + np.abs(want)), dtype, f"{label} {reduction}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("pattern", list(INF_ROWS))
def test_non_finite_class_targets_match_torch(pattern, smoothing, weighted, dtype, backend):
    row, y = INF_ROWS[pattern]
    x = np.array([row, NORMAL_ROW[0]], dtype)
    t = np.array([y, NORMAL_ROW[1]])
    w = np.array([0.5, 1.0, 2.0, 3.0], dtype) if weighted else None
    _check_every_reduction_against_torch(x, t, w, smoothing, dtype, backend, pattern)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_non_finite_rows_in_a_batch_match_torch(weighted, dtype, backend):
    """Every pattern at once, mixed with normal rows: batches of 8+ short rows
    take the lane-per-row path, whose lanes must not leak into each other."""
    rows = [INF_ROWS[p] for p in INF_ROWS] + [NORMAL_ROW] * 5
    x = np.array([r for r, _ in rows] * 2, dtype)
    t = np.array([y for _, y in rows] * 2)
    w = np.array([0.5, 1.0, 2.0, 3.0], dtype) if weighted else None
    _check_every_reduction_against_torch(x, t, w, 0.0, dtype, backend, "batch")
    got = xentc.logsumexp(x, backend=backend)
    want = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), 1).numpy()
    np.testing.assert_allclose(got, want.astype(dtype), rtol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("n_classes", [1, 2, 7, 10, 16])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_special_rows_scattered_in_long_batches_match_torch(n_classes, strided, dtype, backend,
                                                            rng):
    """Narrow rows run in batches of lanes: a batch holding one infinite,
    NaN or ignored row must give the same numbers as the batches without."""
    n = 300
    wide = make_logits(rng, (n, n_classes + 3 if strided else n_classes), dtype, scale=5.0)
    x = wide[:, :n_classes]
    t = make_targets(rng, (n,), n_classes)
    for row, col, value in [(5, 0, np.inf), (70, n_classes - 1, -np.inf), (71, 0, np.nan)]:
        x[row, col] = value
    x[150, :] = -np.inf
    t[[3, 90, 299]] = -100
    w = make_weight(rng, n_classes, dtype)
    for weight in (None, w):
        got = xentc.cross_entropy(x, t, weight, reduction="none", backend=backend)
        want = torch_ce(x, t, weight, reduction="none")
        check_result(got, want, 16 * np.finfo(dtype).eps * (1.0 + np.abs(want)), dtype, "none")
    got = xentc.logsumexp(x, backend=backend)
    want = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), 1).numpy()
    scale = np.max(np.abs(np.where(np.isfinite(x), x, 0)), axis=1)  # lse = max + log(sum)
    assert_within(got, want, 8 * np.finfo(dtype).eps * (scale + np.abs(want)), "logsumexp")


SOFT_INF_ROWS = {
    "neg_inf_logit_zero_prob": ([1.0, -INF, 2.0, 0.5], [0.5, 0.0, 0.25, 0.25]),
    "neg_inf_logit_some_prob": ([1.0, -INF, 2.0, 0.5], [0.25, 0.25, 0.25, 0.25]),
    "pos_inf_logit": ([1.0, INF, 2.0, 0.5], [0.25, 0.25, 0.25, 0.25]),
    "pos_inf_logit_all_prob": ([1.0, INF, 2.0, 0.5], [0.0, 1.0, 0.0, 0.0]),
    "nan_logit": ([1.0, np.nan, 2.0, 0.5], [0.5, 0.0, 0.25, 0.25]),
}


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("pattern", list(SOFT_INF_ROWS))
def test_non_finite_soft_targets_match_torch(pattern, smoothing, weighted, dtype, backend):
    row, q = SOFT_INF_ROWS[pattern]
    x = np.array([row, NORMAL_ROW[0]], dtype)
    t = np.array([q, [0.1, 0.2, 0.3, 0.4]], dtype)
    w = np.array([0.5, 1.0, 2.0, 3.0], dtype) if weighted else None
    _check_every_reduction_against_torch(x, t, w, smoothing, dtype, backend, pattern)


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_nan_row_poisons_only_that_row(soft, dtype, backend, rng):
    x = make_logits(rng, (6, 1030), dtype)
    x[2, 517] = np.nan
    w = make_weight(rng, 1030, dtype)
    t = make_soft_targets(rng, x.shape, dtype) if soft else make_targets(rng, (6,), 1030)
    got = xentc.cross_entropy(x, t, w, reduction="none", label_smoothing=0.1, backend=backend)
    assert np.isnan(got[2])
    keep = np.arange(6) != 2
    want, tol = ce_expected(x[keep], t[keep], dtype, reduction="none", weight=w, label_smoothing=0.1)
    assert_within(got[keep], want, tol)
    for reduction in ("sum", "mean"):
        assert np.isnan(xentc.cross_entropy(x, t, w, reduction=reduction, backend=backend))


# ---------------------------------------------------------------------------
# nll_loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore", [None, -100, 3], ids=["no_ignored", "ignored_default", "ignored_class3"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_nll_loss(shape, weighted, ignore, reduction, dtype, backend, rng):
    n_classes = shape[class_axis(len(shape))]
    x = log_softmax_ref(make_logits(rng, shape, np.float64), axis=class_axis(len(shape))).astype(dtype)
    t = make_targets(rng, target_shape(shape), n_classes, ignore_index=ignore)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    kw = dict(weight=w, ignore_index=-100 if ignore is None else ignore, reduction=reduction)
    got = xentc.nll_loss(x, t, backend=backend, **kw)
    want, tol = nll_expected(x, t, dtype, **kw)
    check_result(got, want, tol, dtype, "vs reference")
    assert_within(got, torch_nll(x, t, **kw), tol, "vs torch")


def test_nll_loss_accepts_arbitrary_values_and_axis(dtype, backend, rng):
    x = make_logits(rng, (3, 4, 9), dtype, scale=10.0)  # not log-probabilities
    t = make_targets(rng, (3, 4), 9, ignore_index=-100)
    for reduction in REDUCTIONS:
        got = xentc.nll_loss(x, t, reduction=reduction, axis=-1, backend=backend)
        want, tol = nll_expected(x, t, dtype, reduction=reduction, axis=-1)
        check_result(got, want, tol, dtype)
        assert_within(got, torch_nll(x, t, reduction=reduction, axis=-1), tol, "vs torch")


def test_cross_entropy_is_nll_of_log_softmax(dtype, backend, rng):
    x = make_logits(rng, (8, 33), dtype)
    t = make_targets(rng, (8,), 33, ignore_index=-100)
    w = make_weight(rng, 33, dtype)
    lsm = xentc.log_softmax(x, axis=1, backend=backend)
    for reduction in REDUCTIONS:
        a = xentc.cross_entropy(x, t, w, reduction=reduction, backend=backend)
        b = xentc.nll_loss(lsm, t, w, reduction=reduction, backend=backend)
        _, tol = ce_expected(x, t, dtype, reduction=reduction, weight=w)
        assert_within(a, b, tol)


# ---------------------------------------------------------------------------
# engines: the C core and the generic array-API engine agree; auto = C core
# ---------------------------------------------------------------------------


def _engine_outputs(x, t, w, smoothing, reduction, backend, axis=None):
    out = {"ce": xentc.cross_entropy(x, t, w, reduction=reduction, label_smoothing=smoothing, axis=axis,
                                     backend=backend)}
    if np.asarray(t).dtype.kind != "f":
        out["nll"] = xentc.nll_loss(x, t, w, reduction=reduction, axis=axis, backend=backend)
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("shape", [(7,), (6, 7), (4, 1025, 3), (5, 3000)], ids=shape_id)
def test_engines_agree(shape, soft, smoothing, reduction, dtype, rng):
    n_classes = shape[class_axis(len(shape))]
    x = make_logits(rng, shape, dtype, scale=6.0)
    w = make_weight(rng, n_classes, dtype)
    t = make_soft_targets(rng, shape, dtype) if soft else make_targets(rng, target_shape(shape), n_classes,
                                                                       ignore_index=-100 if len(shape) > 1 else None)
    cpu = _engine_outputs(x, t, w, smoothing, reduction, "cpu")
    generic = _engine_outputs(x, t, w, smoothing, reduction, "generic")
    auto = _engine_outputs(x, t, w, smoothing, reduction, "auto")
    _, tol = ce_expected(x, t, dtype, reduction=reduction, weight=w, label_smoothing=smoothing, ulps=8, rtol=0.0)
    for key in cpu:
        assert np.asarray(generic[key]).dtype == np.asarray(cpu[key]).dtype == dtype
        assert_within(generic[key], cpu[key], tol, f"{key}: generic vs cpu")
        assert np.asarray(auto[key]).tobytes() == np.asarray(cpu[key]).tobytes(), f"{key}: auto is not the C core"
