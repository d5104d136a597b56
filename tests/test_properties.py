"""Property-based tests (hypothesis) of cross_entropy on both engines."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import xentc
from reference import (
    REDUCTIONS,
    assert_within,
    ce_expected,
    class_axis,
    make_soft_targets,
)

SETTINGS = settings(max_examples=50, deadline=None)
BACKENDS = st.sampled_from(["cpu", "generic"])


@st.composite
def problems(draw, soft=None, nonneg_soft=False):
    """A random, valid cross_entropy call: (x, target, kwargs)."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n_classes = draw(st.one_of(st.integers(1, 40), st.sampled_from([511, 512, 513, 1024, 1025, 2049])))
    ndim = draw(st.integers(1, 4))
    other = [draw(st.integers(1, 5))] + [draw(st.integers(1, 3)) for _ in range(ndim - 2)] if ndim > 1 else []
    last_axis = ndim >= 2 and draw(st.booleans())
    if last_axis:
        shape, axis = tuple(other) + (n_classes,), -1
    else:
        shape, axis = tuple(other[:1]) + (n_classes,) + tuple(other[1:]), None
    ax = class_axis(len(shape), axis)

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 100.0]))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if draw(st.booleans()):  # ties: duplicate a logit along the class axis
        src = np.take(x, [0], axis=ax)
        idx = [slice(None)] * len(shape)
        idx[ax] = slice(n_classes - 1, n_classes)
        x[tuple(idx)] = src

    kw = {
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "label_smoothing": draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))),
        "axis": axis,
    }
    if draw(st.booleans()):
        w = rng.uniform(0.0, 2.0, n_classes)
        w[rng.random(n_classes) < 0.1] = 0.0
        kw["weight"] = w.astype(dtype)

    is_soft = draw(st.booleans()) if soft is None else soft
    tshape = tuple(s for i, s in enumerate(shape) if i != ax)
    if is_soft:
        if nonneg_soft or draw(st.booleans()):
            t = make_soft_targets(rng, shape, dtype, axis=axis)
        else:
            t = rng.uniform(-0.5, 1.5, shape).astype(dtype)
    else:
        ignore_index = draw(st.sampled_from([-100, 0, n_classes - 1, -1]))
        t = rng.integers(0, n_classes, size=tshape)
        t = np.where(rng.random(tshape) < 0.2, ignore_index, t)
        t = np.asarray(t).astype(draw(st.sampled_from([np.int64, np.int32, np.int16])))
        kw["ignore_index"] = ignore_index
    return x, t, kw


def _expected(x, t, kw):
    return ce_expected(x, t, x.dtype, **kw)


@SETTINGS
@given(problems(), BACKENDS)
def test_matches_reference(problem, backend):
    x, t, kw = problem
    got = xentc.cross_entropy(x, t, backend=backend, **kw)
    want, tol = _expected(x, t, kw)
    assert np.asarray(got).dtype == x.dtype
    assert np.shape(got) == np.shape(want)
    assert_within(got, want, tol)


@SETTINGS
@given(problems())
def test_engines_agree(problem):
    x, t, kw = problem
    cpu = xentc.cross_entropy(x, t, backend="cpu", **kw)
    generic = xentc.cross_entropy(x, t, backend="generic", **kw)
    _, tol = ce_expected(x, t, x.dtype, ulps=8, rtol=0.0, **kw)
    assert np.asarray(cpu).dtype == np.asarray(generic).dtype == x.dtype
    assert_within(cpu, generic, tol, "cpu vs generic")
    for fn in ("log_softmax", "logsumexp"):
        ax = class_axis(x.ndim, kw["axis"])
        a = getattr(xentc, fn)(x, axis=ax, backend="cpu")
        b = getattr(xentc, fn)(x, axis=ax, backend="generic")
        scale = np.max(np.abs(x.astype(np.float64)), axis=ax, keepdims=fn == "log_softmax") + 1.0
        assert_within(a, b, 16 * np.finfo(x.dtype).eps * (np.abs(b) + scale), fn)


@SETTINGS
@given(problems(), st.floats(-1e3, 1e3), BACKENDS)
def test_shift_invariance(problem, shift, backend):
    x, t, kw = problem
    ax = class_axis(x.ndim, kw["axis"])
    rng = np.random.default_rng(abs(int(shift * 1000)))
    c = (rng.uniform(-1.0, 1.0, np.delete(x.shape, ax)) * shift).astype(x.dtype)
    shifted = x + np.expand_dims(c, ax)
    a = xentc.cross_entropy(x, t, backend=backend, **kw)
    b = xentc.cross_entropy(shifted, t, backend=backend, **kw)
    _, tol_a = _expected(x, t, kw)
    _, tol_b = _expected(shifted, t, kw)
    assert_within(b, a, np.asarray(tol_a) + np.asarray(tol_b), "shifted vs original")


@SETTINGS
@given(problems(nonneg_soft=True), BACKENDS)
def test_non_negative(problem, backend):
    x, t, kw = problem
    got = np.asarray(xentc.cross_entropy(x, t, backend=backend, **kw))
    finite = ~np.isnan(got)
    assert np.all(got[finite] >= 0), got
    if kw["reduction"] != "mean":  # mean is NaN only when nothing contributes
        assert np.all(finite), got


@SETTINGS
@given(problems(soft=False), BACKENDS)
def test_reduction_consistency(problem, backend):
    x, t, kw = problem
    kw = dict(kw)
    none = np.asarray(xentc.cross_entropy(x, t, backend=backend, **{**kw, "reduction": "none"}), np.float64)
    total = xentc.cross_entropy(x, t, backend=backend, **{**kw, "reduction": "sum"})
    _, tol = _expected(x, t, {**kw, "reduction": "sum"})
    assert_within(total, none.sum(), tol, "sum of none vs sum")
