"""Accuracy bars, the vectorized exp, extreme logits and per-ISA agreement."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special

import xentc
import xentc._core  # noqa: F401  (private test hooks)
from reference import (
    REDUCTIONS,
    assert_within,
    ce_expected,
    logsumexp_extended,
    loss_scale,
    make_logits,
    make_soft_targets,
    make_targets,
    make_weight,
    softmax_family_tolerance,
)

ACCURACY_CLASSES = [7, 1000, 1025, 5000, 131072]
ACCURACY_SCALES = [1.0, 30.0, 300.0, 1e4]
# The hardest rows for this bar: the target is the row maximum m, |m| < 1 and
# the other logits are far below, so lse = m + log(s) with s = 1 + delta.
# Rounding s to a float costs up to eps/2 absolutely, which can exceed
# 2 eps |lse|; meeting the bar there needs log1p(delta) (or equivalent).


# ---------------------------------------------------------------------------
# per-row accuracy bar:  |loss - exact| <= 2 eps max(|lse|, |x_target|)
# ---------------------------------------------------------------------------


def _accuracy_case(rng, n_classes, scale, dtype):
    n_rows = max(4, 65536 // n_classes)
    x = make_logits(rng, (n_rows, n_classes), dtype, scale=scale)
    t = make_targets(rng, (n_rows,), n_classes)
    if np.dtype(dtype) == np.float32:
        lse = scipy.special.logsumexp(x.astype(np.float64), axis=1)
        x_t = x[np.arange(n_rows), t].astype(np.float64)
        exact = lse - x_t
    else:  # the oracle needs more precision than float64
        if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
            pytest.skip("no extended precision long double on this platform")
        lse = logsumexp_extended(x, axis=1)
        x_t = x[np.arange(n_rows), t].astype(np.longdouble)
        exact = lse - x_t
    bar = 2 * np.finfo(dtype).eps * np.maximum(np.abs(lse), np.abs(x_t))
    return x, t, exact, bar


def _assert_bar(got, exact, bar):
    err = np.abs(np.asarray(got).astype(exact.dtype) - exact)
    ratio = err / bar
    worst = int(np.argmax(ratio))
    assert np.all(err <= bar), (
        f"{np.count_nonzero(err > bar)} rows exceed the bar; worst row {worst}: "
        f"err {float(err[worst]):.3e} = {float(ratio[worst]):.2f} x bar"
    )


@pytest.mark.parametrize("scale", ACCURACY_SCALES)
@pytest.mark.parametrize("n_classes", ACCURACY_CLASSES)
def test_accuracy_bar_per_isa(n_classes, scale, dtype, isa, rng):
    x, t, exact, bar = _accuracy_case(rng, n_classes, scale, dtype)
    got = xentc.cross_entropy(x, t, reduction="none", backend="cpu")
    _assert_bar(got, exact, bar)


@pytest.mark.parametrize("scale", ACCURACY_SCALES)
@pytest.mark.parametrize("n_classes", ACCURACY_CLASSES)
def test_accuracy_bar_generic(n_classes, scale, dtype, rng):
    x, t, exact, bar = _accuracy_case(rng, n_classes, scale, dtype)
    got = xentc.cross_entropy(x, t, reduction="none", backend="generic")
    _assert_bar(got, exact, bar)


# ---------------------------------------------------------------------------
# the vectorized exp of each ISA
# ---------------------------------------------------------------------------

EXP_RANGES = {np.float32: -87.0, np.float64: -708.0}


def _ulp_error(got, x, dtype):
    want = np.exp(x.astype(np.float64))
    if np.dtype(dtype) == np.float64:
        want_ld = np.exp(x.astype(np.longdouble))
        ulp = np.spacing(want)
        return np.abs(got.astype(np.longdouble) - want_ld) / ulp
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / ulp


def test_exp_accuracy(dtype, isa, rng):
    lo = EXP_RANGES[dtype]
    grid = np.linspace(lo, 0.0, 2_000_001)
    x = np.concatenate([grid, rng.uniform(lo, 0.0, 200_000), [-0.0, 0.0, lo]]).astype(dtype)
    saved = x.copy()
    got = xentc._core.exp(x)
    np.testing.assert_array_equal(x, saved)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == x.shape
    assert not np.shares_memory(got, x)
    err = _ulp_error(got, x, dtype)
    worst = int(np.argmax(err))
    assert err[worst] <= 2.0, f"exp({x[worst]!r}) = {got[worst]!r}: {float(err[worst]):.2f} ulp"
    assert got[-3] == 1.0 and got[-2] == 1.0


@pytest.mark.parametrize("n", list(range(0, 20)) + [31, 33, 63, 65, 1023, 1025])
def test_exp_lengths(n, dtype, isa, rng):
    x = rng.uniform(-20.0, 0.0, n).astype(dtype)
    got = xentc._core.exp(x)
    assert got.shape == (n,) and got.dtype == dtype
    if n:
        assert np.max(_ulp_error(got, x, dtype)) <= 2.0


def test_exp_underflow(dtype, isa):
    finfo = np.finfo(dtype)
    lo = EXP_RANGES[dtype]
    x = np.array([-np.inf, -1e30, -1e4, lo - 20.0, lo - 2.0, -finfo.max], dtype)
    got = xentc._core.exp(x)
    assert not np.any(np.isnan(got)), got
    assert got[0] == 0.0, f"exp(-inf) = {got[0]!r}; masked (-inf) logits must get exactly zero probability"
    # exact results are below the smallest normal; allow flushing to a tiny value
    assert np.all((got >= 0.0) & (got <= 2 * finfo.tiny)), got


# ---------------------------------------------------------------------------
# extreme logits
# ---------------------------------------------------------------------------

EXTREMES = {np.float32: 1e4, np.float64: 1e300}


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_extreme_logits(weighted, smoothing, soft, dtype, backend, rng):
    big = EXTREMES[dtype]
    n, c = 6, 5
    x = (rng.choice([-1.0, 1.0, 0.5, 0.0], size=(n, c)) * big).astype(dtype)
    x[0] = [big, -big, 0.0, big, -big]  # two maxima
    x[1] = [-big, -big, -big, -big, -big]  # all equal and very negative
    x[2] = [big, big, big, big, big]  # all equal and very positive
    w = make_weight(rng, c, dtype) if weighted else None
    if soft:
        t = make_soft_targets(rng, (n, c), dtype)
    else:
        t = np.array([1, 3, 0, 2, 4, 1])  # includes targets on -big logits
        x[3, 2] = -big
    for reduction in REDUCTIONS:
        got = xentc.cross_entropy(x, t, w, reduction=reduction, label_smoothing=smoothing, backend=backend)
        assert np.all(np.isfinite(got)), (reduction, got)
        want, tol = ce_expected(x, t, dtype, reduction=reduction, weight=w, label_smoothing=smoothing)
        assert_within(got, want, tol, reduction)
    for fn in ("log_softmax", "softmax"):
        got = getattr(xentc, fn)(x, axis=1, backend=backend)
        if fn == "softmax":
            assert np.all(np.isfinite(got))
        want = getattr(scipy.special, fn)(x.astype(np.float64), axis=1)
        assert_within(got, want, softmax_family_tolerance(fn, x, 1, dtype), fn)


def test_extreme_logits_known_values(dtype, backend):
    big = EXTREMES[dtype]
    x = np.array([[big, -big, 0.0], [-big, -big, -big]], dtype)
    got = xentc.cross_entropy(x, np.array([1, 2]), reduction="none", backend=backend)
    np.testing.assert_allclose(got, [2 * big, np.log(3.0)], rtol=8 * np.finfo(dtype).eps)


# ---------------------------------------------------------------------------
# every ISA gives the same answers (up to a few ulp) as every other
# ---------------------------------------------------------------------------


def _isa_outputs(x, t, q, w):
    out = {}
    for red in REDUCTIONS:
        out[f"ce_{red}"] = xentc.cross_entropy(x, t, w, reduction=red, label_smoothing=0.1, backend="cpu")
        out[f"soft_{red}"] = xentc.cross_entropy(x, q, w, reduction=red, label_smoothing=0.1, backend="cpu")
        out[f"nll_{red}"] = xentc.nll_loss(x, t, w, reduction=red, backend="cpu")
    out["log_softmax"] = xentc.log_softmax(x, axis=1, backend="cpu")
    out["softmax"] = xentc.softmax(x, axis=1, backend="cpu")
    out["logsumexp"] = xentc.logsumexp(x, axis=1, backend="cpu")
    return out


@pytest.mark.parametrize("n_classes", [1, 5, 8, 17, 1025, 5000])
def test_isas_agree(n_classes, dtype, supported_isa_names, rng):
    isas = supported_isa_names
    assert "baseline" in isas
    x = make_logits(rng, (9, n_classes), dtype, scale=10.0)
    t = make_targets(rng, (9,), n_classes, ignore_index=-100)
    q = make_soft_targets(rng, x.shape, dtype)
    w = make_weight(rng, n_classes, dtype)
    results = {}
    try:
        for name in isas:
            xentc._core.set_isa(name)
            results[name] = _isa_outputs(x, t, q, w)
    finally:
        xentc._core.set_isa(None)
    eps = np.finfo(dtype).eps
    row_scale = loss_scale(x, t, w)
    for name in isas:
        for key, got in results[name].items():
            ref = results["baseline"][key]
            assert np.asarray(got).dtype == dtype, (name, key)
            if key.startswith(("ce_", "soft_", "nll_")):
                # aggregated values: scale of the sum; per-row: the row scale
                scale = row_scale if key.endswith("none") else np.sum(row_scale)
                tol = 8 * eps * scale
            else:
                tol = softmax_family_tolerance(key, x, 1, dtype, ulps=4)
            assert_within(got, ref, tol, f"{name} vs baseline: {key}")
        # ... and to the reference
        for red in REDUCTIONS:
            want, tol = ce_expected(x, t, dtype, reduction=red, weight=w, label_smoothing=0.1)
            assert_within(results[name][f"ce_{red}"], want, tol, f"{name}: ce_{red} vs reference")
            want, tol = ce_expected(x, q, dtype, reduction=red, weight=w, label_smoothing=0.1)
            assert_within(results[name][f"soft_{red}"], want, tol, f"{name}: soft_{red} vs reference")


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("n_classes", [3, 16, 1000, 1025, 4099])
def test_reference_per_isa(n_classes, soft, dtype, isa, rng):
    x = make_logits(rng, (17, n_classes), dtype, scale=8.0)
    w = make_weight(rng, n_classes, dtype)
    t = make_soft_targets(rng, x.shape, dtype) if soft else make_targets(rng, (17,), n_classes, ignore_index=-100)
    for red in REDUCTIONS:
        for smoothing in (0.0, 0.3):
            got = xentc.cross_entropy(x, t, w, reduction=red, label_smoothing=smoothing, backend="cpu")
            want, tol = ce_expected(x, t, dtype, reduction=red, weight=w, label_smoothing=smoothing)
            assert np.asarray(got).dtype == dtype
            assert_within(got, want, tol, f"{isa} {red} smoothing={smoothing}")


# ---------------------------------------------------------------------------
# 16-bit conversions of the C core (its float16 / bfloat16 rows), every ISA
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_half_widening_is_exact_for_every_value(kind, isa):
    import ml_dtypes

    bits = np.arange(1 << 16, dtype=np.uint16)
    dtype = np.float16 if kind == "float16" else ml_dtypes.bfloat16
    want = bits.view(dtype).astype(np.float32)
    got = xentc._core.half_to_f32(bits, kind == "bfloat16")
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # NaN payloads and signs survive (the quiet bit set, as the hardware does)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_half_narrowing_rounds_to_nearest_even(kind, isa, rng):
    import ml_dtypes

    dtype = np.float16 if kind == "float16" else ml_dtypes.bfloat16
    # every 16-bit value, the points halfway between neighbours (ties) and a
    # hair either side of them, random bits, and the range's edges
    bits = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):  # the NaNs among the bits
        exact = bits.view(dtype).astype(np.float64)
        exact32 = exact.astype(np.float32)
    ok = np.isfinite(exact)
    lo, hi = exact[ok][:-1], exact[ok][1:]
    mid = ((lo + hi) / 2)[np.sign(lo) == np.sign(hi)].astype(np.float32)  # exact
    x = np.concatenate([exact32, mid, np.nextafter(mid, np.float32(np.inf)),
                        np.nextafter(mid, np.float32(-np.inf))])
    x = np.concatenate([x, rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
                        .astype(np.uint32).view(np.float32),
                        np.array([65504, 65519.99, 65520, 1e6, -1e6, 3e38, 1e-8, -1e-8,
                                  2.0 ** -25, 2.0 ** -24, 1.5 * 2.0 ** -24, np.inf, -np.inf,
                                  np.nan, 0.0, -0.0], np.float32)])
    got = xentc._core.f32_to_half(x, kind == "bfloat16").view(dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf, NaN: as wanted
        want = x.astype(dtype)  # NumPy's and ml_dtypes' casts round to nearest even
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
