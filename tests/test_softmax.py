"""log_softmax / softmax / logsumexp against scipy.special and torch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

import xentc
from reference import assert_within, make_logits, softmax_family_tolerance, unaligned_copy

CASES = [
    ((7,), -1),
    ((7,), 0),
    ((5, 9), 0),
    ((5, 9), 1),
    ((5, 9), -1),
    ((5, 9), -2),
    ((3, 4, 1025), 2),
    ((3, 4, 1025), 1),
    ((3, 1025, 4), -2),
    ((3, 513, 4), 0),
    ((2, 3, 4, 5), 0),
    ((2, 3, 4, 5), 3),
    ((1, 1), 1),
    ((4, 1), -1),
    ((2, 5000), 1),
]


def case_id(case):
    shape, axis = case
    return f"{'x'.join(map(str, shape))}-axis{axis}"


SCIPY = {
    "log_softmax": lambda x, axis: scipy.special.log_softmax(x, axis=axis),
    "softmax": lambda x, axis: scipy.special.softmax(x, axis=axis),
}
TORCH = {
    "log_softmax": lambda x, axis: torch.log_softmax(x, dim=axis),
    "softmax": lambda x, axis: torch.softmax(x, dim=axis),
}


def check_out(got, want, tol, dtype, shape):
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == shape
    assert_within(got, want, tol)


@pytest.mark.parametrize("fn", ["log_softmax", "softmax"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_softmax_functions(fn, case, dtype, backend, rng):
    shape, axis = case
    x = make_logits(rng, shape, dtype, scale=5.0)
    got = getattr(xentc, fn)(x, axis=axis, backend=backend)
    tol = softmax_family_tolerance(fn, x, axis, dtype)
    x64 = x.astype(np.float64)
    check_out(got, SCIPY[fn](x64, axis), tol, dtype, shape)
    assert_within(got, TORCH[fn](torch.from_numpy(x64), axis).numpy(), tol, "vs torch (float64)")


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_logsumexp(case, keepdims, dtype, backend, rng):
    shape, axis = case
    x = make_logits(rng, shape, dtype, scale=5.0)
    got = xentc.logsumexp(x, axis=axis, keepdims=keepdims, backend=backend)
    want = scipy.special.logsumexp(x.astype(np.float64), axis=axis, keepdims=keepdims)
    tol = softmax_family_tolerance("logsumexp", x, axis, dtype, keepdims=keepdims)
    if np.ndim(want) == 0:
        assert isinstance(got, (np.ndarray, np.generic))
        assert np.asarray(got).dtype == dtype
        assert_within(got, want, tol)
    else:
        check_out(got, want, tol, dtype, want.shape)
    t = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), dim=axis, keepdim=keepdims).numpy()
    assert_within(got, t, tol, "vs torch (float64)")


@pytest.mark.parametrize("fn", ["log_softmax", "softmax"])
@pytest.mark.parametrize("shape, axis", [((0, 5), -1), ((0, 5, 3), 1), ((2, 0, 5), -1)],
                         ids=["0x5", "0x5x3-axis1", "2x0x5"])
def test_no_rows(fn, shape, axis, dtype, backend):
    """Classes but no rows: an empty result, as torch's (the C core gets no buffers)."""
    x = np.zeros(shape, dtype)
    got = getattr(xentc, fn)(x, axis=axis, backend=backend)
    check_out(got, TORCH[fn](torch.from_numpy(x), axis).numpy(), 0.0, dtype, shape)


def test_default_axes(backend, rng):
    x = make_logits(rng, (3, 4, 5), np.float64)
    np.testing.assert_array_equal(xentc.log_softmax(x, backend=backend), xentc.log_softmax(x, -1, backend=backend))
    np.testing.assert_array_equal(xentc.softmax(x, backend=backend), xentc.softmax(x, axis=2, backend=backend))
    lse = xentc.logsumexp(x, backend=backend)
    assert lse.shape == (3, 4)
    np.testing.assert_array_equal(lse, xentc.logsumexp(x, axis=-1, keepdims=False, backend=backend))


def test_softmax_rows_sum_to_one(dtype, backend, rng):
    x = make_logits(rng, (64, 1537), dtype, scale=20.0)
    p = xentc.softmax(x, axis=1, backend=backend)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=1), 1.0, rtol=0, atol=64 * np.finfo(dtype).eps)
    lsm = xentc.log_softmax(x, axis=1, backend=backend)
    lse = xentc.logsumexp(x, axis=1, keepdims=True, backend=backend)
    tol = softmax_family_tolerance("log_softmax", x, 1, dtype)
    assert_within(lsm, x.astype(np.float64) - lse.astype(np.float64), tol)


@pytest.mark.parametrize(
    "layout",
    [
        lambda a: np.asfortranarray(a),
        lambda a: np.repeat(a, 2, axis=1)[:, ::2],
        lambda a: a[::-1].copy()[::-1],
        lambda a: a[:, ::-1].copy()[:, ::-1],
        lambda a: unaligned_copy(a, 4),
        lambda a: unaligned_copy(a, 1),
    ],
    ids=["fortran", "strided_classes", "reversed_rows", "reversed_classes", "unaligned4", "unaligned1"],
)
@pytest.mark.parametrize("axis", [0, 1])
def test_layouts(layout, axis, dtype, backend, rng):
    x0 = make_logits(rng, (11, 1030), dtype)
    x = layout(x0)
    np.testing.assert_array_equal(x, x0)
    for fn in ("log_softmax", "softmax"):
        got = getattr(xentc, fn)(x, axis=axis, backend=backend)
        check_out(got, SCIPY[fn](x0.astype(np.float64), axis), softmax_family_tolerance(fn, x0, axis, dtype),
                  dtype, x.shape)
    got = xentc.logsumexp(x, axis=axis, backend=backend)
    want = scipy.special.logsumexp(x0.astype(np.float64), axis=axis)
    check_out(got, want, softmax_family_tolerance("logsumexp", x0, axis, dtype), dtype, want.shape)


NONFINITE_ROWS = {
    "neg_inf": [-np.inf, 0.0, 1.0, 2.0],
    "pos_inf": [np.inf, 0.0, 1.0, 2.0],
    "two_pos_inf": [np.inf, np.inf, 1.0, 2.0],
    "pos_and_neg_inf": [np.inf, -np.inf, 1.0, 2.0],
    "all_neg_inf": [-np.inf] * 4,
    "nan": [np.nan, 0.0, 1.0, 2.0],
}


@pytest.mark.parametrize("pattern", list(NONFINITE_ROWS))
def test_non_finite_match_torch(pattern, dtype, backend):
    x = np.array([NONFINITE_ROWS[pattern], [0.1, 0.2, 0.3, 0.4]], dtype)
    tx = torch.from_numpy(x)
    tol = 16 * np.finfo(dtype).eps * 8
    pairs = {
        "log_softmax": (xentc.log_softmax(x, axis=1, backend=backend), torch.log_softmax(tx, 1)),
        "softmax": (xentc.softmax(x, axis=1, backend=backend), torch.softmax(tx, 1)),
        "logsumexp": (xentc.logsumexp(x, axis=1, backend=backend), torch.logsumexp(tx, 1)),
    }
    failures = []
    for name, (got, want) in pairs.items():
        want = want.numpy()
        try:
            check_out(got, want, tol, dtype, want.shape)
            # exact zeros (probabilities of -inf logits) must be exact
            np.testing.assert_array_equal(got[want == 0], 0, err_msg="exact zeros")
        except AssertionError as exc:
            failures.append(f"{name}: got {got.tolist()}, torch {want.tolist()}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("big", [1e4, 3e38], ids=["1e4", "3e38"])
def test_extreme_float32_logits(big, backend):
    x = np.array([[big, -big, 0.0, big / 2], [-big, -big, -big / 2, 1.0]], np.float32)
    lse = xentc.logsumexp(x, axis=1, backend=backend)
    np.testing.assert_allclose(lse, [big, 1.0], rtol=1e-6)
    p = xentc.softmax(x, axis=1, backend=backend)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(xentc.log_softmax(x, axis=1, backend=backend)[:, 0]))
