"""``xentc.log_loss`` against scikit-learn 1.9 and a float64 NumPy reference.

scikit-learn is the reference for behaviour (values, warnings, errors and
their messages); the float64 formula below, evaluated on class indices the
test draws itself, is the independent reference for the numbers.
"""

from __future__ import annotations

import types
import warnings

import array_api_strict as xps
import numpy as np
import pytest
import torch
from scipy.special import expit, log_softmax, softmax
from sklearn.metrics import log_loss as sk_log_loss

import xentc
from xentc._engines import cpu, generic

FLOATS = (np.float64, np.float32, np.float16)
# |xentc - scikit-learn| / value: scikit-learn sums in the probabilities'
# dtype (float16 results are rounded to float16), xentc in float64.
RTOL = {np.float64: 1e-12, np.float32: 1e-6, np.float16: 2e-3}


def outcome(func, *args, **kwargs):
    """What a call gives: ("value", float) or ("error", class name, message), and the
    warnings it emits (category name and message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("value", func(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every error is compared
            result = ("error", type(exc).__name__, str(exc))
    notes = [(w.category.__name__, str(w.message)) for w in caught
             if not issubclass(w.category, RuntimeWarning)]
    return result, notes


def assert_same_as_sklearn(*args, rtol=1e-12, **kwargs):
    want, want_notes = outcome(sk_log_loss, *args, **kwargs)
    got, got_notes = outcome(xentc.log_loss, *args, **kwargs)
    assert got_notes == want_notes
    assert got[0] == want[0], (got, want)
    if want[0] == "error":
        assert got == want
    else:
        assert isinstance(got[1], float)
        np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=0)
    return got


def reference(y_index, proba, dtype, sample_weight=None, normalize=True):
    """Float64 log loss of class indices `y_index` (probabilities clipped in `dtype`)."""
    eps = np.finfo(dtype).eps
    q = np.clip(np.asarray(proba, dtype), eps, 1 - eps).astype(np.float64)
    nll = -np.log(q[np.arange(len(y_index)), y_index])
    w = np.ones_like(nll) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return np.sum(w * nll) / (np.sum(w) if normalize else 1.0)


def random_proba(rng, n, c, dtype):
    p = rng.dirichlet(np.full(c, 0.7), size=n)
    return p.astype(dtype)


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def test_documented_values():
    # scikit-learn's docstring gives 0.21616 for this example (columns ham,
    # spam in sorted order), its user guide 0.6904911 for the second one.
    ham_spam = (["spam", "ham", "ham", "spam"], [[.1, .9], [.9, .1], [.8, .2], [.35, .65]])
    assert xentc.log_loss(*ham_spam) == pytest.approx(0.2161618746805791, rel=1e-15)
    assert xentc.log_loss(*ham_spam) == sk_log_loss(*ham_spam)
    proba = [[.2, .7, .1], [.6, .2, .2], [.6, .1, .3]]
    assert xentc.log_loss([1, 0, 2], proba) == pytest.approx(0.6904911240102197, rel=1e-15)
    assert xentc.log_loss([1, 0, 2], proba) == pytest.approx(
        -np.mean(np.log([.7, .6, .3])), rel=1e-15)


CASES = {
    # id -> (y_true from class indices, number of classes, kwargs maker)
    "binary": (lambda i: i, 2, lambda rng, n: {}),
    "multiclass": (lambda i: i, 7, lambda rng, n: {}),
    "strings": (lambda i: np.array(["ant", "bee", "cat", "dog"])[i], 4, lambda rng, n: {}),
    "gapped_ints": (lambda i: np.array([-5, 3, 40])[i], 3, lambda rng, n: {}),
    "weights": (lambda i: i, 5, lambda rng, n: {"sample_weight": rng.uniform(0, 3, n)}),
    "sum": (lambda i: i, 5, lambda rng, n: {"normalize": False}),
    "weighted_sum": (lambda i: i, 3,
                     lambda rng, n: {"normalize": False, "sample_weight": rng.uniform(0, 3, n)}),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES)
def test_matches_sklearn_and_reference(case, dtype, rng):
    to_labels, n_classes, make_kwargs = CASES[case]
    n = 300
    index = rng.integers(0, n_classes, n)
    index[:n_classes] = np.arange(n_classes)  # every class present
    y_true = to_labels(index)
    proba = random_proba(rng, n, n_classes, dtype)
    kwargs = make_kwargs(rng, n)
    got = assert_same_as_sklearn(y_true, proba, rtol=RTOL[dtype], **kwargs)[1]
    want = reference(index, proba, dtype, kwargs.get("sample_weight"),
                     kwargs.get("normalize", True))
    # float16 logs are rounded to float16 as in scikit-learn: 1 ulp each.
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == np.float16 else 1e-6)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_binary_1d_and_one_column(dtype, rng):
    y_true = rng.choice(np.array(["no", "yes"]), 200)
    p_yes = rng.uniform(0, 1, 200).astype(dtype)
    got = assert_same_as_sklearn(y_true, p_yes, rtol=RTOL[dtype])[1]
    assert_same_as_sklearn(y_true, p_yes[:, None], rtol=RTOL[dtype])
    two = np.stack([1 - p_yes, p_yes], axis=1)  # 1 - p computed in dtype, as both do
    want = reference((y_true == "yes").astype(int), two, dtype)
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == np.float16 else 1e-6)


def test_labels_argument(rng):
    proba = random_proba(rng, 50, 4, np.float64)
    y_true = rng.choice([10, 30], 50)  # classes 20 and 40 never occur
    got = assert_same_as_sklearn(y_true, proba, labels=[10, 20, 30, 40])[1]
    assert got == pytest.approx(reference(np.searchsorted([10, 20, 30, 40], y_true), proba,
                                          np.float64), rel=1e-12)
    assert_same_as_sklearn(y_true, proba, labels=range(10, 41, 10))
    assert_same_as_sklearn(y_true, proba, labels=np.array([40, 30, 20, 10]))  # warns: unsorted
    assert_same_as_sklearn(["b", "a", "b"], proba[:3, :2] / proba[:3, :2].sum(1, keepdims=True),
                           labels=["b", "a"])


@pytest.mark.parametrize("y_true", [
    np.array([3, 1, 3, 7, 1], np.uint8),            # a gap: classes mapped through a table
    np.array([-4, -2, -4, -3, -2], np.int16),       # negative, contiguous
    np.array([True, False, True, True, False]),
    np.array([5, 10**12, 5, -10**12, 10**12]),      # too sparse to count: sorted instead
    np.array([2.0, 1.0, 2.0, 0.0, 1.0]),            # integral floats
    [2, 1, 2, 0, 1],
    ("x", "y", "x", "z", "y"),
], ids=["uint8_gap", "int16_negative", "bool", "sparse_int64", "float", "list", "tuple"])
def test_label_kinds(y_true, rng):
    n_classes = len(set(np.asarray(y_true).tolist()))
    assert_same_as_sklearn(y_true, random_proba(rng, 5, n_classes, np.float64))


def test_unique_values_in_any_order():
    # The array API leaves the order of unique values open: classes come out
    # sorted, and each sample's code indexes the sorted classes.
    numpy_xp = xentc._dispatch.namespace(np.zeros(1))

    def unique_inverse_reversed(y):
        values, inverse = numpy_xp.unique_inverse(y)
        return values[::-1], values.shape[0] - 1 - inverse

    xp = types.SimpleNamespace(unique_inverse=unique_inverse_reversed, take=numpy_xp.take,
                               asarray=numpy_xp.asarray, astype=numpy_xp.astype,
                               int64=numpy_xp.int64)
    classes, codes = xentc.metrics._unique_codes(xp, np.array([2.0, 0.5, 2.0, -1.0]))
    np.testing.assert_array_equal(classes, [-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(codes, [2, 1, 2, 0])


def test_multilabel_indicator(rng):
    indicator = (rng.random((40, 3)) < 0.4).astype(np.int64)
    proba = rng.uniform(0, 1, (40, 3))
    assert_same_as_sklearn(indicator, proba / proba.sum(1, keepdims=True))
    assert_same_as_sklearn(indicator[:, :2].astype(bool), proba[:, 1])


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_perfect_and_worst_predictions(dtype):
    eps = float(np.finfo(dtype).eps)
    y_true = [0, 2, 1, 2]
    onehot = np.eye(3, dtype=dtype)[y_true]
    perfect = assert_same_as_sklearn(y_true, onehot, rtol=RTOL[dtype])[1]
    assert perfect == pytest.approx(-np.log(np.float64(np.array(1 - eps, dtype))), rel=1e-3)
    worst = assert_same_as_sklearn(y_true, np.roll(onehot, 1, axis=1), rtol=RTOL[dtype])[1]
    assert worst == pytest.approx(-np.log(np.float64(np.array(eps, dtype))), rel=1e-3)


def test_y_pred_is_the_former_name(rng):
    proba = random_proba(rng, 20, 3, np.float64)
    y_true = np.arange(20) % 3
    assert_same_as_sklearn(y_true, y_pred=proba)
    assert_same_as_sklearn(y_true, proba, y_pred=proba)


# ---------------------------------------------------------------------------
# errors and warnings: scikit-learn's, in its order
# ---------------------------------------------------------------------------

P = [[.2, .8], [.6, .4], [.5, .5]]
BAD = {
    "nan": ([0, 1, 1], [[.2, np.nan], [.6, .4], [.5, .5]], {}),
    "inf": ([0, 1, 1], [[.2, np.inf], [.6, .4], [.5, .5]], {}),
    "neg_inf": ([0, 1, 1], [[.2, -np.inf], [.6, .4], [.5, .5]], {}),
    "inf_and_nan": ([0, 1, 1], [[.2, np.inf], [np.nan, .4], [.5, .5]], {}),
    "inf_float16": ([0, 1, 1], np.array([[.2, np.inf], [.6, .4], [.5, .5]], np.float16), {}),
    "above_one": ([0, 1, 1], [[.2, 1.5], [.6, .4], [.5, .5]], {}),
    "above_one_float32": ([0, 1, 1], np.array([[.2, 1.1], [.6, .4], [.5, .5]], np.float32), {}),
    "below_zero": ([0, 1, 1], [[.2, -.5], [.6, .4], [.5, .5]], {}),
    "below_zero_and_bad_labels": ([0, 0, 0], [[.2, -.5], [.6, .4], [.5, .5]], {}),
    "lengths": ([0, 1], P, {}),
    "weight_length": ([0, 1, 1], P, {"sample_weight": [1, 2]}),
    "one_label": ([1, 1, 1], P, {}),
    "one_label_string": (["a", "a", "a"], P, {}),
    "one_label_in_labels": ([1, 1, 1], P, {"labels": [1]}),
    "class_count": ([0, 1, 2], P, {}),
    "class_count_labels": ([0, 1, 1], P, {"labels": [0, 1, 2]}),
    "not_in_labels": ([0, 1, 3], P, {"labels": [0, 1]}),
    "not_in_labels_numpy": (np.array([0, 1, 3]), P, {"labels": np.array([0, 1])}),
    "strings_not_in_int_labels": (["a", "a", "b"], P, {"labels": [0, 1]}),
    "zero_weights": ([0, 1, 1], P, {"sample_weight": [0, 0, 0]}),
    "zero_weight_sum": ([0, 1, 1], P, {"sample_weight": [1, -1, 0]}),
    "zero_weights_sum": ([0, 1, 1], P, {"sample_weight": [0, 0, 0], "normalize": False}),
    "nan_weight": ([0, 1, 1], P, {"sample_weight": [1, np.nan, 1]}),
    "weights_2d": ([0, 1, 1], P, {"sample_weight": [[1], [1], [1]]}),
    "weight_scalar": ([0, 1, 1], P, {"sample_weight": 2.0}),
    "continuous": ([0.5, 1, 1], P, {}),
    "nan_label": ([0, np.nan, 1], P, {}),
    "inf_label": ([0, np.inf, 1], P, {}),
    "mixed_label_types": (["a", 1, 1], P, {}),
    "bytes_labels": ([b"a", b"b", b"a"], P, {}),
    "legacy_multilabel": ([[1, 2], [1], [2]], P, {}),
    "multioutput": (np.array([[0, 2], [1, 1], [0, 0]]), P, {}),
    "multilabel_with_labels": (np.array([[0, 1], [1, 1], [0, 0]]), P, {"labels": [0, 1]}),
    "labels_3d": (np.zeros((3, 2, 2), int), P, {}),
    "continuous_labels": ([0, 1, 1], P, {"labels": [0.5, 1.5]}),
    "empty_labels": ([0, 1, 1], P, {"labels": []}),
    "duplicate_labels": ([0, 1, 1], P, {"labels": [0, 1, 1]}),
    "dim_3": ([0, 1, 1], np.zeros((3, 2, 1)), {}),
    "no_rows": ([], np.zeros((0, 2)), {}),
    "no_columns": ([0, 1, 1], np.zeros((3, 0)), {}),
    "proba_0d": ([0, 1, 1], np.array(0.5), {}),
    "labels_0d": (np.array(1), P, {}),
    "complex": ([0, 1, 1], np.array(P) + 0j, {}),
    "text": ([0, 1, 1], [["a", "b"], ["c", "d"], ["e", "f"]], {}),
    "not_summing_to_one": ([0, 1, 1], [[.2, .7], [.6, .4], [.5, .5]], {}),
    # scikit-learn's tolerance on row sums: 1e-8 + sqrt(eps) (2.49e-8, float32 3.45e-4)
    "sum_just_above_tolerance": ([0, 1], [[.5, .5], [.5, .5 + 3e-8]], {}),
    "sum_just_below_tolerance": ([0, 1], [[.5, .5], [.5, .5 - 3e-8]], {}),
    "sum_within_tolerance": ([0, 1], [[.5, .5 + 2e-8], [.5, .5 - 2e-8]], {}),
    "sum_above_tolerance_float32": ([0, 1], np.array([[.5, .5], [.5, .5004]], np.float32), {}),
    "sum_within_tolerance_float32": ([0, 1], np.array([[.5, .5003], [.5, .5]], np.float32), {}),
    "not_summing_and_class_count": ([0, 1, 2], [[.2, .7], [.6, .4], [.5, .5]], {}),
    "y_true_scalar": (5, P, {}),
    "y_proba_scalar": ([0, 1, 1], 5, {}),
    "normalize_int": ([0, 1, 1], P, {"normalize": 1}),
    "labels_scalar": ([0, 1, 1], P, {"labels": 3}),
    "y_pred_scalar": ([0, 1, 1], None, {"y_pred": 5}),
}


@pytest.mark.parametrize("case", BAD)
def test_errors_and_warnings_match_sklearn(case):
    y_true, proba, kwargs = BAD[case]
    assert_same_as_sklearn(y_true, proba, rtol=RTOL[np.float32], **kwargs)


def test_parameter_errors_are_value_and_type_errors():
    with pytest.raises(ValueError, match="'normalize' parameter") as info:
        xentc.log_loss([0, 1], [.3, .6], normalize="yes")
    assert isinstance(info.value, TypeError)


def test_missing_y_proba():
    with pytest.raises(TypeError, match="y_proba"):
        xentc.log_loss([0, 1])


# ---------------------------------------------------------------------------
# array libraries and engines
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "generic"])
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_torch(dtype, backend, rng):
    index = rng.integers(0, 5, 64)
    proba = random_proba(rng, 64, 5, np.float64)
    weight = rng.uniform(0, 2, 64)
    pt = torch.from_numpy(proba.astype(dtype))
    got = xentc.log_loss(torch.from_numpy(index), pt, sample_weight=torch.from_numpy(weight),
                         backend=backend)
    assert isinstance(got, float)
    want = sk_log_loss(index, pt.numpy(), sample_weight=weight)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype])
    with pytest.raises(ValueError, match="^Input contains NaN.$"):
        xentc.log_loss(torch.from_numpy(index), pt * torch.nan, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "generic"])
def test_array_api_strict(backend, rng):
    index = rng.integers(0, 4, 64)
    proba = random_proba(rng, 64, 4, np.float32)
    got = xentc.log_loss(xps.asarray(index), xps.asarray(proba), labels=xps.asarray([0, 1, 2, 3]),
                         backend=backend)
    np.testing.assert_allclose(got, reference(index, proba, np.float32), rtol=1e-6)
    too_large = f"^y_prob contains values greater than 1: {float((proba * 2).max())}$"
    with pytest.raises(ValueError, match=too_large):
        xentc.log_loss(xps.asarray(index), xps.asarray(proba * 2), backend=backend)
    with pytest.warns(UserWarning, match="do not sum to one"):
        xentc.log_loss(xps.asarray(index), xps.asarray(proba * 0.5), backend=backend)


@pytest.mark.parametrize("namespace", ["numpy", "torch"])
def test_proba_rows_contract(namespace, rng):
    p = rng.uniform(-0.5, 1.5, (33, 7))
    target = rng.integers(0, 7, 33)
    to = torch.from_numpy if namespace == "torch" else np.asarray
    xp = xentc._dispatch.namespace(to(p))
    for engine in (cpu, generic):
        lo, hi, total, picked = engine.proba_rows(xp, to(p), to(target))
        assert type(lo) is float and type(hi) is float
        assert tuple(total.shape) == tuple(picked.shape) == (33,)
        assert xentc._dispatch.namespace(total) is xp
        assert (lo, hi) == (p.min(), p.max())
        np.testing.assert_allclose(np.asarray(total), p.sum(axis=1), rtol=1e-14)
        np.testing.assert_array_equal(np.asarray(picked), p[np.arange(33), target])
        p_nan = p.copy()
        p_nan[5, 3] = np.nan
        lo, hi, _, picked = engine.proba_rows(xp, to(p_nan), None)
        assert np.isnan(lo) and np.isnan(hi) and picked is None


# ---------------------------------------------------------------------------
# from_logits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "generic"])
def test_from_logits_multiclass(backend, rng):
    x = rng.standard_normal((80, 6)) * 3
    index = rng.integers(0, 6, 80)
    weight = rng.uniform(0, 2, 80)
    want = -np.sum(weight * log_softmax(x, axis=1)[np.arange(80), index]) / np.sum(weight)
    got = xentc.log_loss(index, x, sample_weight=weight, from_logits=True, backend=backend)
    assert got == pytest.approx(want, rel=1e-13)
    assert got == pytest.approx(sk_log_loss(index, softmax(x, axis=1), sample_weight=weight),
                                rel=1e-12)
    got32 = xentc.log_loss(torch.from_numpy(index), torch.from_numpy(x).float(), from_logits=True,
                           sample_weight=weight, backend=backend)
    assert got32 == pytest.approx(want, rel=1e-6)


def test_from_logits_binary_and_multilabel(rng):
    s = rng.standard_normal(50) * 4
    y_true = rng.choice(["neg", "pos"], 50)
    want = sk_log_loss(y_true, expit(s))
    assert xentc.log_loss(y_true, s, from_logits=True) == pytest.approx(want, rel=1e-12)
    indicator = (rng.random((50, 4)) < 0.5).astype(int)
    x = rng.standard_normal((50, 4))
    want = sk_log_loss(indicator, softmax(x, axis=1))
    assert xentc.log_loss(indicator, x, from_logits=True) == pytest.approx(want, rel=1e-12)


def test_from_logits_is_exact_where_probabilities_clip():
    # softmax(x)[y] = exp(-1000) underflows and would be clipped to eps.
    x = np.array([[0.0, 1000.0], [500.0, -500.0]])
    assert xentc.log_loss([0, 1], x, from_logits=True) == pytest.approx(1000.0, rel=1e-15)
    assert xentc.log_loss([0, 1], softmax(x, axis=1)) == pytest.approx(
        -np.log(np.finfo(np.float64).eps), rel=1e-12)


def test_from_logits_non_finite():
    x = np.array([[0.0, 1.0], [2.0, 0.5], [1.0, 1.0]])
    x_masked = x.copy()
    x_masked[0, 1] = -np.inf  # a class of probability zero, not the true one
    assert xentc.log_loss([0, 1, 1], x_masked, from_logits=True) == pytest.approx(
        -np.mean(log_softmax(x_masked, axis=1)[[0, 1, 2], [0, 1, 1]]), rel=1e-15)
    x_masked[1, 1] = -np.inf  # ... the true one: an infinite loss
    assert xentc.log_loss([0, 1, 1], x_masked, from_logits=True) == np.inf
    for bad, what in ((np.nan, "NaN"), (np.inf, "infinity")):
        x_bad = x.copy()
        x_bad[2, 0] = bad
        with pytest.raises(ValueError, match=f"^Input contains {what}"):
            xentc.log_loss([0, 1, 1], x_bad, from_logits=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(70000, 3), (9, 5000), (1, 1)])
def test_proba_rows_c_pass(shape, dtype, rng):
    """The C pass (chunked over threads, vector lanes with a partial tail)
    equals NumPy's reductions on every row, for 1 and 2 threads."""
    p = rng.uniform(0, 1, shape).astype(dtype)
    target = rng.integers(0, shape[1], shape[0])
    want_total = p.astype(np.float64).sum(axis=1)
    for n_threads in (1, 2):
        lo, hi, total, picked = cpu.proba_rows(np, p, target, n_threads=n_threads)
        assert (lo, hi) == (p.min(), p.max())
        assert total.dtype == dtype
        np.testing.assert_allclose(total, want_total, rtol=4 * np.finfo(dtype).eps * shape[1])
        np.testing.assert_array_equal(picked, p[np.arange(shape[0]), target])
    with pytest.raises(IndexError, match="out of range"):
        cpu.proba_rows(np, p, np.full(shape[0], shape[1]))
