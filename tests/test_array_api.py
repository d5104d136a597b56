"""The generic engine on a strict array-API namespace (array_api_strict)."""

from __future__ import annotations

import array_api_strict as xps
import numpy as np
import pytest

import xentc
from reference import (
    make_case,
    REDUCTIONS,
    assert_within,
    ce_expected,
    log_softmax_ref,
    logsumexp_ref,
    make_logits,
    make_targets,
    make_weight,
    nll_expected,
    softmax_family_tolerance,
    softmax_ref,
)

STRICT_DTYPES = {np.float32: xps.float32, np.float64: xps.float64}
STRICT_ARRAY = type(xps.asarray(0.0))


def to_strict(a):
    return None if a is None else xps.asarray(np.asarray(a))


def to_numpy(a):
    assert isinstance(a, STRICT_ARRAY), f"result is {type(a)!r}, not an array_api_strict array"
    return np.from_dlpack(a)


def check_strict(got, want, tol, dtype):
    assert got.dtype == STRICT_DTYPES[dtype]
    assert tuple(got.shape) == np.shape(want)
    assert_within(to_numpy(got), want, tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("case", [((9,), None), ((6, 9), None), ((3, 9, 4), None), ((2, 3, 1025), -1)],
                         ids=["C", "NC", "NCd", "BTV_axis-1"])
def test_cross_entropy(case, soft, reduction, dtype, rng):
    shape, axis = case
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    for backend in ("auto", "cpu", "generic"):
        got = xentc.cross_entropy(to_strict(x), to_strict(t), to_strict(w), reduction=reduction,
                                  label_smoothing=0.1, axis=axis, backend=backend, **kw)
        want, tol = ce_expected(x, t, dtype, reduction=reduction, weight=w, label_smoothing=0.1, axis=axis, **kw)
        check_strict(got, want, tol, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(reduction, dtype, rng):
    x = log_softmax_ref(make_logits(rng, (5, 8, 3), np.float64), axis=1).astype(dtype)
    t = make_targets(rng, (5, 3), 8, ignore_index=-100)
    w = make_weight(rng, 8, dtype)
    got = xentc.nll_loss(to_strict(x), to_strict(t), to_strict(w), reduction=reduction)
    want, tol = nll_expected(x, t, dtype, reduction=reduction, weight=w)
    check_strict(got, want, tol, dtype)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family(axis, dtype, rng):
    x = make_logits(rng, (4, 6, 33), dtype)
    sx = to_strict(x)
    check_strict(xentc.log_softmax(sx, axis=axis), log_softmax_ref(x, axis=axis),
                 softmax_family_tolerance("log_softmax", x, axis, dtype), dtype)
    check_strict(xentc.softmax(sx, axis=axis), softmax_ref(x, axis=axis),
                 softmax_family_tolerance("softmax", x, axis, dtype), dtype)
    for keepdims in (False, True):
        check_strict(xentc.logsumexp(sx, axis=axis, keepdims=keepdims), logsumexp_ref(x, axis, keepdims),
                     softmax_family_tolerance("logsumexp", x, axis, dtype, keepdims=keepdims), dtype)


def test_cpu_backend_refuses_other_devices(rng):
    # array_api_strict's "device1" stands for an accelerator: the C core must
    # refuse it rather than read it through the host.
    dev = xps.Device("device1")
    x = xps.asarray(make_logits(rng, (3, 4), np.float32), device=dev)
    t = xps.asarray(np.array([0, 1, 2]), device=dev)
    with pytest.raises(ValueError, match="backend"):
        xentc.cross_entropy(x, t, backend="cpu")
    got = xentc.cross_entropy(x, t, reduction="none")
    assert got.device == dev


def test_errors_match_numpy(rng):
    x = to_strict(make_logits(rng, (3, 5), np.float32))
    with pytest.raises(IndexError, match="7"):
        xentc.cross_entropy(x, to_strict(np.array([0, 7, 1])))
    with pytest.raises(ValueError, match="target"):
        xentc.cross_entropy(x, to_strict(np.array([0, 1])))
    with pytest.raises(ValueError, match="weight"):
        xentc.cross_entropy(x, to_strict(np.array([0, 1, 2])), to_strict(np.ones(4, np.float32)))
    with pytest.raises(TypeError, match="input"):
        xentc.cross_entropy(to_strict(np.zeros((3, 5), np.int32)), to_strict(np.array([0, 1, 2])))
