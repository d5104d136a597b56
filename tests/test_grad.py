"""cross_entropy_with_grad: the fused loss and gradient, on both engines.

Oracles are independent of the library: torch autograd in float64, and
central finite differences of the float64 NumPy reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xentc
from reference import (
    REDUCTIONS,
    assert_within,
    ce_expected,
    class_axis,
    cross_entropy_ref,
    grad_tolerance,
    lead_shape,
    make_logits,
    make_soft_targets,
    make_targets,
    make_weight,
    torch_reference,
)

WITH_GRAD = xentc.cross_entropy_with_grad

# name -> (shape, axis): 1-D, (N, C), K-dim (N, C, d1, d2), language model (B, T, V)
LAYOUTS = {
    "C": ((7,), None),
    "NC": ((5, 7), None),
    "NCd1d2": ((3, 7, 2, 3), None),
    "BTV": ((2, 3, 7), -1),
    "NC_long": ((3, 700), None),  # rows past the short-row path: the kept-exps gradient
}
# smaller ones for finite differences (two loss evaluations per logit)
FD_LAYOUTS = {
    "C": ((5,), None),
    "NC": ((3, 5), None),
    "NCd1d2": ((2, 5, 2, 2), None),
    "BTV": ((2, 2, 5), -1),
}
# class indices with none ignored / some -100 / a real class (2) as ignore_index; probabilities
TARGETS = ("class", "ignored", "ignore_class", "soft")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """The torch oracle runs on one thread: on tiny problems torch's thread pool
    costs more than it gives, and the suite shares the machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------
# problems and oracles
# ---------------------------------------------------------------------------


def make_problem(rng, shape, axis, dtype, targets, weighted=False, smoothing=0.0):
    """Logits and the keyword arguments of one call (target included)."""
    n_classes = shape[class_axis(len(shape), axis)]
    tshape = lead_shape(shape, axis)
    kw = dict(axis=axis, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = make_weight(rng, n_classes, dtype)
    if targets == "soft":
        kw["target"] = make_soft_targets(rng, shape, dtype, axis=axis)
    elif targets == "class":
        kw["target"] = make_targets(rng, tshape, n_classes)
    elif targets == "ignored":
        kw["target"] = make_targets(rng, tshape, n_classes, ignore_index=-100)
    elif targets == "ignore_class":
        kw["target"] = make_targets(rng, tshape, n_classes, ignore_index=2)
        kw["ignore_index"] = 2
    else:
        raise ValueError(targets)
    return make_logits(rng, shape, dtype), kw


def make_grad_output(rng, reduction, shape, axis, dtype):
    """A random upstream gradient: per-element for "none", a Python float otherwise."""
    if reduction == "none":
        return rng.uniform(-2.0, 2.0, lead_shape(shape, axis)).astype(dtype)
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))


def check_arrays(loss, grad, x, reduction, axis=None):
    """Namespace (NumPy), shapes and dtypes of a (loss, grad) result."""
    assert isinstance(grad, np.ndarray), f"grad is {type(grad)!r}"
    assert isinstance(loss, (np.ndarray, np.generic)), f"loss is {type(loss)!r}"
    assert grad.shape == x.shape and grad.dtype == x.dtype
    want_shape = lead_shape(x.shape, axis) if reduction == "none" else ()
    assert np.shape(loss) == want_shape and np.asarray(loss).dtype == x.dtype


def check_against_torch(x, kw, reduction, backend, grad_output=None, ulps=16):
    """Run cross_entropy_with_grad and compare loss and gradient with torch autograd."""
    dtype = x.dtype
    loss, grad = WITH_GRAD(x, reduction=reduction, grad_output=grad_output, backend=backend, **kw)
    check_arrays(loss, grad, x, reduction, kw.get("axis"))
    ref_kw = {k: v for k, v in kw.items() if k != "target"}
    want_loss, want_grad = torch_reference(x, kw["target"], reduction=reduction,
                                           grad_output=grad_output, **ref_kw)
    _, loss_tol = ce_expected(x, kw["target"], dtype, reduction=reduction, **ref_kw)
    assert_within(loss, want_loss, loss_tol, "loss vs torch")
    tol = grad_tolerance(x, dtype, reduction=reduction, grad_output=grad_output, ulps=ulps, **kw)
    assert_within(grad, want_grad, tol, "grad vs torch")
    return loss, grad


# ---------------------------------------------------------------------------
# against torch autograd and finite differences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_torch_autograd(layout, targets, weighted, smoothing, backend, rng):
    """Loss and grad_output-scaled gradient equal torch's for every combination of
    semantics, reduction and layout (1-D input: a single ignored target is the
    all-ignored case); ignored rows are exactly 0."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, np.float64, targets, weighted, smoothing)
    ignored = None
    if targets in ("ignored", "ignore_class"):
        ignored = np.expand_dims(np.asarray(kw["target"]) == kw.get("ignore_index", -100),
                                 class_axis(x.ndim, axis))
        ignored = np.broadcast_to(ignored, x.shape)
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, shape, axis, np.float64)
        _, grad = check_against_torch(x, kw, reduction, backend, grad_output=go)
        if ignored is not None:
            assert np.all(grad[ignored] == 0.0), reduction


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_float32_within_eps_of_float64_torch(layout, targets, backend, rng):
    """float32 gradients are within a few float32 ulp (of the row's scale) of torch's
    float64 gradient of the same, float32-rounded, problem."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, np.float32, targets, weighted=True, smoothing=0.1)
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, shape, axis, np.float32)
        check_against_torch(x, kw, reduction, backend, grad_output=go)


def finite_difference_grad(f, x, h=1e-5):
    """Central differences of the scalar function f at x (float64)."""
    g = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp_, xm_ = x.copy(), x.copy()
        xp_[i] += h
        xm_[i] -= h
        g[i] = (f(xp_) - f(xm_)) / (2 * h)
    return g


FD_CASES = [(layout, targets) for layout in FD_LAYOUTS for targets in ("class", "ignored", "soft")
            if not (layout == "C" and targets == "ignored")]  # its mean would be 0/0


@pytest.mark.parametrize("weighted_smoothed", [False, True], ids=["plain", "weighted_smoothed"])
@pytest.mark.parametrize("layout, targets", FD_CASES)
def test_matches_finite_differences(layout, targets, weighted_smoothed, backend, rng):
    """The gradient is the derivative of the float64 NumPy reference loss
    (contracted with grad_output), by central differences, for each reduction."""
    shape, axis = FD_LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, np.float64, targets, weighted_smoothed,
                         0.3 if weighted_smoothed else 0.0)
    ref_kw = dict(kw)
    target = ref_kw.pop("target")
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, shape, axis, np.float64)
        loss, grad = WITH_GRAD(x, reduction=reduction, grad_output=go, backend=backend, **kw)
        check_arrays(loss, grad, x, reduction, axis)

        def objective(z):
            return float(np.sum(go * cross_entropy_ref(z, target, reduction=reduction, **ref_kw)))

        np.testing.assert_allclose(grad, finite_difference_grad(objective, x), rtol=0, atol=1e-7,
                                   err_msg=reduction)


def test_documented_example(backend):
    """The docstring's example: softmax minus one-hot, divided by the batch size."""
    x = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    loss, grad = WITH_GRAD(x, np.array([2, 0]), backend=backend)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, (p - np.eye(3)[[2, 0]]) / 2, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[[0, 1], [2, 0]])), rtol=1e-14)


# ---------------------------------------------------------------------------
# grad_output
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_output_default_is_one(reduction, backend, rng):
    """grad_output=None is the same as 1 (scalar) or ones (per-element), bit for bit."""
    x, kw = make_problem(rng, (6, 9), None, np.float64, "ignored", weighted=True, smoothing=0.1)
    ones = np.ones(6) if reduction == "none" else 1.0
    _, g_default = WITH_GRAD(x, reduction=reduction, backend=backend, **kw)
    _, g_ones = WITH_GRAD(x, reduction=reduction, grad_output=ones, backend=backend, **kw)
    np.testing.assert_array_equal(g_default, g_ones)


@pytest.mark.parametrize("form", ["float", "int", "np_float32", "np_0d", "torch_0d"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_scalar_grad_output_forms(form, reduction, backend, rng):
    """A reduced loss takes grad_output as any scalar; the gradient scales by it."""
    x, kw = make_problem(rng, (6, 9), None, np.float64, "ignored", weighted=True)
    value = {"float": -2.5, "int": 3, "np_float32": np.float32(-2.5), "np_0d": np.array(-2.5),
             "torch_0d": torch.tensor(-2.5, dtype=torch.float64)}[form]
    _, g1 = WITH_GRAD(x, reduction=reduction, backend=backend, **kw)
    _, g = WITH_GRAD(x, reduction=reduction, grad_output=value, backend=backend, **kw)
    assert isinstance(g, np.ndarray) and g.shape == x.shape and g.dtype == x.dtype
    tol = grad_tolerance(x, np.float64, reduction=reduction, grad_output=float(value), ulps=4, **kw)
    assert_within(g, float(value) * g1, tol, form)


@pytest.mark.parametrize("form", ["numpy", "float32", "list"])
def test_per_element_grad_output_forms(form, backend, rng):
    """reduction="none" takes one grad_output per loss element, in any array form,
    and scales each gradient row by its own value (zero included)."""
    x, kw = make_problem(rng, (5, 3, 8), -1, np.float64, "ignored", weighted=True, smoothing=0.1)
    go = rng.uniform(-2.0, 2.0, (5, 3))
    go[1, 2] = 0.0
    value = {"numpy": go, "float32": go.astype(np.float32), "list": go.tolist()}[form]
    go_used = np.asarray(value, np.float64)
    _, g1 = WITH_GRAD(x, reduction="none", backend=backend, **kw)
    _, g = WITH_GRAD(x, reduction="none", grad_output=value, backend=backend, **kw)
    assert isinstance(g, np.ndarray) and g.shape == x.shape and g.dtype == x.dtype
    tol = grad_tolerance(x, np.float64, reduction="none", grad_output=go_used, ulps=4, **kw)
    assert_within(g, go_used[..., None] * g1, tol, form)
    assert np.all(g[1, 2] == 0.0)


def test_zero_grad_output_gives_zero_gradient(backend, rng):
    """grad_output = 0 zeroes the gradient (finite logits, nonzero denominator)."""
    x, kw = make_problem(rng, (4, 6), None, np.float32, "ignored", weighted=True, smoothing=0.2)
    for reduction, go in (("sum", 0.0), ("mean", 0.0), ("none", np.zeros(4, np.float32))):
        _, g = WITH_GRAD(x, reduction=reduction, grad_output=go, backend=backend, **kw)
        np.testing.assert_array_equal(g, np.zeros_like(x))


# ---------------------------------------------------------------------------
# out=, in place
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_in_place_equals_out_of_place(layout, targets, dtype, backend, rng):
    """out=input overwrites the logits with exactly the out-of-place gradient, and the
    loss is unchanged (K-dim input, whose class axis is not last, goes through a copy)."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, dtype, targets, weighted=True, smoothing=0.1)
    for reduction in ("mean", "none"):
        go = make_grad_output(rng, reduction, shape, axis, dtype)
        want_loss, want_grad = WITH_GRAD(x, reduction=reduction, grad_output=go, backend=backend,
                                         **kw)
        buf = x.copy()
        loss, grad = WITH_GRAD(buf, reduction=reduction, grad_output=go, out=buf,
                               backend=backend, **kw)
        assert grad is buf
        check_arrays(loss, grad, x, reduction, axis)
        np.testing.assert_array_equal(grad, want_grad)
        np.testing.assert_array_equal(loss, want_loss)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_out_separate_buffer(layout, dtype, backend, rng):
    """out= a fresh buffer receives the gradient, is returned, and the input is untouched."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, dtype, "ignored", weighted=True, smoothing=0.1)
    x_before = x.copy()
    _, want = WITH_GRAD(x, backend=backend, **kw)
    out = np.full_like(x, np.nan)
    _, grad = WITH_GRAD(x, out=out, backend=backend, **kw)
    assert grad is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(x, x_before)


def _out_buffer(kind, shape, dtype):
    """An (N, C) array of the right shape and dtype in an unusual memory layout."""
    n, c = shape
    if kind == "fortran":
        return np.asfortranarray(np.empty(shape, dtype))
    if kind == "padded_rows":
        return np.empty((n, c + 3), dtype)[:, :c]
    if kind == "strided_classes":
        return np.empty((n, 2 * c), dtype)[:, ::2]
    if kind == "reversed_rows":
        return np.empty(shape, dtype)[::-1]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["fortran", "padded_rows", "strided_classes", "reversed_rows"])
def test_out_any_memory_layout(kind, backend, rng):
    """Any writable `out` of the input's shape and dtype is accepted, whatever its
    strides, and receives the same gradient as without `out`."""
    x, kw = make_problem(rng, (6, 70), None, np.float64, "ignored", weighted=True, smoothing=0.1)
    _, want = WITH_GRAD(x, backend=backend, **kw)
    out = _out_buffer(kind, x.shape, x.dtype)
    _, grad = WITH_GRAD(x, out=out, backend=backend, **kw)
    assert grad is out
    np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------------------
# threads and row paths of the C core
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("n_classes", [3, 40, 100, 3000])
def test_threads_bit_identical(n_classes, targets, rng):
    """n_threads=1 and n_threads=2 give bit-identical losses and gradients (several
    work chunks, short and long rows)."""
    n_rows = 3 * (16384 // n_classes) + 5  # more than two chunks of the C core
    x, kw = make_problem(rng, (n_rows, n_classes), None, np.float32, targets, weighted=True,
                         smoothing=0.1)
    go = rng.uniform(0.5, 2.0, n_rows).astype(np.float32)
    one = WITH_GRAD(x, reduction="none", grad_output=go, n_threads=1, backend="cpu", **kw)
    two = WITH_GRAD(x, reduction="none", grad_output=go, n_threads=2, backend="cpu", **kw)
    np.testing.assert_array_equal(two[1], one[1])
    np.testing.assert_array_equal(two[0], one[0])
    mean_one = WITH_GRAD(x, n_threads=1, backend="cpu", **kw)
    mean_two = WITH_GRAD(x, n_threads=2, backend="cpu", **kw)
    np.testing.assert_array_equal(mean_two[1], mean_one[1])
    np.testing.assert_array_equal(mean_two[0], mean_one[0])


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("n_classes", [2, 3, 17, 64, 65, 700, 3000])
def test_row_paths(n_classes, targets, dtype, backend, rng):
    """Small C (short, batched rows) and large C (long rows in blocks, with a running
    max raised by later blocks) match torch within the dtype's eps."""
    x, kw = make_problem(rng, (5, n_classes), None, dtype, targets, weighted=True, smoothing=0.1)
    x[1] = np.linspace(-6.0, 6.0, n_classes, dtype=dtype)  # every block raises the max
    x[2] = 0.0  # all classes tie: every exp is exactly one
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, x.shape, None, dtype)
        check_against_torch(x, kw, reduction, backend, grad_output=go)


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("n_classes", [3, 70, 3000])
def test_every_isa(n_classes, targets, isa, dtype, rng):
    """Each compiled ISA of the C core gives torch's gradient, in and out of place."""
    x, kw = make_problem(rng, (7, n_classes), None, dtype, targets, weighted=True, smoothing=0.1)
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, x.shape, None, dtype)
        _, want = check_against_torch(x, kw, reduction, "cpu", grad_output=go)
        buf = x.copy()
        _, got = WITH_GRAD(buf, reduction=reduction, grad_output=go, out=buf, backend="cpu", **kw)
        np.testing.assert_array_equal(got, want, err_msg=f"{isa} {reduction}")


# ---------------------------------------------------------------------------
# edge cases: torch's results reproduced
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("out", [False, True], ids=["new", "out"])
@pytest.mark.parametrize("targets", ["class", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 5), (2, 5, 0)], ids=["0x5", "2x5x0"])
def test_no_rows(shape, reduction, targets, out, dtype, backend):
    """An empty batch gives torch's loss (mean NaN, sum 0, "none" empty) and an
    empty gradient, with and without `out`."""
    x = np.zeros(shape, dtype)
    t = np.zeros(shape, dtype) if targets == "soft" else np.zeros(lead_shape(shape, None), np.int64)
    buf = np.empty_like(x) if out else None
    loss, grad = WITH_GRAD(x, t, reduction=reduction, out=buf, backend=backend)
    check_arrays(loss, grad, x, reduction)
    if out:
        assert grad is buf
    want_loss, want_grad = torch_reference(x, t, reduction=reduction)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout", ["NC", "NCd1d2", "BTV"])
def test_all_targets_ignored_mean(layout, weighted, smoothing, backend, rng):
    """Nothing to average: loss NaN and an all-zero gradient, as torch."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, np.float64, "class", weighted, smoothing)
    kw["target"] = np.full_like(kw["target"], -100)
    loss, grad = check_against_torch(x, kw, "mean", backend)
    assert np.isnan(loss)
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    loss, grad = check_against_torch(x, kw, "mean", backend, grad_output=-3.0)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_kept_targets_all_weight_zero(smoothing, reduction, backend, rng):
    """Every kept target has weight 0: "mean" divides by zero; torch's loss is NaN and
    its kept rows' gradient NaN (0 * inf), ignored rows 0. xentc matches it."""
    x = make_logits(rng, (5, 4), np.float64)
    w = np.array([0.0, 1.5, 0.0, 2.0])
    kw = dict(target=np.array([0, 2, -100, 0, 2]), weight=w, label_smoothing=smoothing)
    loss, grad = check_against_torch(x, kw, reduction, backend)
    if reduction == "mean":
        assert np.isnan(loss)
        assert np.all(grad[2] == 0.0)


@pytest.mark.parametrize("targets", ["ignored", "soft"])
def test_huge_logits(targets, dtype, backend, rng):
    """Logits of +-1e4: no overflow; confident rows, and rows whose target sits at
    -1e4 (gradient -1 there), match torch."""
    x, kw = make_problem(rng, (6, 9), None, dtype, targets, weighted=True, smoothing=0.1)
    x[...] = np.where(rng.random(x.shape) < 0.5, -1e4, 1e4) + rng.standard_normal(x.shape)
    if targets != "soft":
        kw["target"][1:] = np.argmin(x[1:], axis=1)  # the worst class
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, x.shape, None, dtype)
        check_against_torch(x, kw, reduction, backend, grad_output=go)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("n_classes", [5, 3000])
def test_minus_inf_logits(n_classes, targets, smoothing, dtype, backend, rng):
    """Rows with -inf logits (one, several, a leading run longer than a block, on the
    target itself) give torch's losses (inf where a -inf class has target mass) and
    its finite gradients."""
    x, kw = make_problem(rng, (5, n_classes), None, dtype, targets, smoothing=smoothing)
    x[0, 1] = -np.inf
    x[1, ::2] = -np.inf
    x[2, : n_classes // 2] = -np.inf  # the long path's first blocks have no max
    x[3, 0] = -np.inf
    if targets != "soft":
        kw["target"][:4] = [0, 1, n_classes - 1, 0]  # row 3: target at -inf, loss inf
    for reduction in REDUCTIONS:
        loss, grad = check_against_torch(x, kw, reduction, backend)
        if targets != "soft":
            assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("n_classes", [5, 3000])
def test_ignored_rows_exactly_zero(n_classes, backend, rng):
    """An ignored row's gradient is exactly 0 as documented, whatever its logits
    (a row of -inf, +inf, NaN) and its grad_output (inf, NaN) are."""
    x = make_logits(rng, (6, n_classes), np.float64)
    x[1] = -np.inf
    x[2, 3] = np.inf
    x[3, 2] = np.nan
    t = np.array([0, -100, -100, -100, -100, 1])
    go = np.array([1.0, 1.0, 1.0, 1.0, np.nan, 2.0])
    go[1] = np.inf
    for reduction, g in (("none", go), ("sum", None), ("mean", None)):
        _, grad = WITH_GRAD(x, t, reduction=reduction, grad_output=g, backend=backend)
        np.testing.assert_array_equal(grad[1:5], 0.0, err_msg=reduction)
        assert np.all(np.isfinite(grad[[0, 5]])), reduction


# ---------------------------------------------------------------------------
# torch CPU tensors
# ---------------------------------------------------------------------------


def _torch_case(rng, layout, dtype, targets="ignored"):
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, dtype, targets, weighted=True, smoothing=0.1)
    tkw = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
           for k, v in kw.items()}
    return x, kw, torch.from_numpy(x.copy()), tkw


@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_torch_tensors_in_torch_out(layout, targets, dtype, backend, rng):
    """Torch CPU tensors give torch tensors back (type, dtype, device, shape) with
    torch autograd's values; a torch grad_output is accepted."""
    x, kw, xt, tkw = _torch_case(rng, layout, dtype, targets)
    ref_kw = {k: v for k, v in kw.items() if k != "target"}
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, x.shape, kw["axis"], dtype)
        go_t = torch.tensor(go, dtype=xt.dtype)
        loss, grad = WITH_GRAD(xt, reduction=reduction, grad_output=go_t, backend=backend, **tkw)
        for name, a in (("loss", loss), ("grad", grad)):
            assert isinstance(a, torch.Tensor), f"{name} is {type(a)!r}"
            assert a.dtype == xt.dtype and a.device == xt.device, name
            assert not a.requires_grad, name
        assert tuple(grad.shape) == x.shape
        want_shape = lead_shape(x.shape, kw["axis"]) if reduction == "none" else ()
        assert tuple(loss.shape) == want_shape
        want_loss, want_grad = torch_reference(x, kw["target"], reduction=reduction,
                                               grad_output=go, **ref_kw)
        _, loss_tol = ce_expected(x, kw["target"], dtype, reduction=reduction, **ref_kw)
        assert_within(loss.numpy(), want_loss, loss_tol, f"loss, {reduction}")
        tol = grad_tolerance(x, dtype, reduction=reduction, grad_output=go, **kw)
        assert_within(grad.numpy(), want_grad, tol, f"grad, {reduction}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_torch_out_in_place(layout, dtype, backend, rng):
    """out= a torch tensor (the input itself, or another one) is written in place: same
    object, same data_ptr, the out-of-place values."""
    _, _, xt, tkw = _torch_case(rng, layout, dtype)
    want_loss, want_grad = WITH_GRAD(xt, backend=backend, **tkw)
    other = torch.empty_like(xt)
    for out in (other, xt):
        ptr = out.data_ptr()
        loss, grad = WITH_GRAD(xt, out=out, backend=backend, **tkw)
        assert grad is out and out.data_ptr() == ptr
        assert isinstance(loss, torch.Tensor) and loss.dtype == xt.dtype
        torch.testing.assert_close(grad, want_grad, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(loss, want_loss, rtol=0, atol=0, equal_nan=True)


def test_torch_out_must_match_dtype(backend):
    """A torch `out` of another dtype is refused, naming `out`."""
    xt = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="`out`"):
        WITH_GRAD(xt, torch.tensor([0, 1, 2]), out=torch.zeros(3, 4), backend=backend)


# ---------------------------------------------------------------------------
# CUDA tensors: the generic engine, on the device
# ---------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_tensors_keep_device(layout, targets, rng):
    """CUDA tensors give CUDA results with torch autograd's values; out= a CUDA tensor
    (the input itself) is written in place."""
    x, kw, xt, tkw = _torch_case(rng, layout, np.float64, targets)
    dev = torch.device("cuda")
    xt = xt.to(dev)
    tkw = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in tkw.items()}
    ref_kw = {k: v for k, v in kw.items() if k != "target"}
    for reduction in REDUCTIONS:
        go = make_grad_output(rng, reduction, x.shape, kw["axis"], np.float64)
        go_t = torch.tensor(go, dtype=torch.float64, device=dev)
        loss, grad = WITH_GRAD(xt, reduction=reduction, grad_output=go_t, **tkw)
        assert isinstance(grad, torch.Tensor) and isinstance(loss, torch.Tensor)
        assert grad.device == xt.device and loss.device == xt.device
        assert grad.dtype == xt.dtype and tuple(grad.shape) == x.shape
        _, want_grad = torch_reference(x, kw["target"], reduction=reduction, grad_output=go,
                                       **ref_kw)
        tol = grad_tolerance(x, np.float64, reduction=reduction, grad_output=go, **kw)
        assert_within(grad.cpu().numpy(), want_grad, tol, reduction)
        ptr = xt.data_ptr()
        buf = xt.clone()
        _, got = WITH_GRAD(buf, reduction=reduction, grad_output=go_t, out=buf, **tkw)
        assert got is buf and buf.device == xt.device
        torch.testing.assert_close(got, grad, rtol=0, atol=0, equal_nan=True)
        assert xt.data_ptr() == ptr


@cuda
def test_cuda_refuses_cpu_backend():
    """backend="cpu" never copies device data to the host: it raises."""
    xt = torch.zeros(3, 4, device="cuda")
    with pytest.raises(ValueError, match="cpu"):
        WITH_GRAD(xt, torch.tensor([0, 1, 2], device="cuda"), backend="cpu")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("out_shape, out_dtype", [((4, 6), np.float64), ((6, 4), np.float64),
                                                  ((4, 5), np.float32), ((20,), np.float64)],
                         ids=["classes", "transposed", "dtype", "flat"])
def test_bad_out(out_shape, out_dtype, backend):
    """An `out` of another shape or dtype is a ValueError naming `out`; nothing is written."""
    x = np.zeros((4, 5))
    out = np.full(out_shape, 7.0, out_dtype)
    with pytest.raises(ValueError, match="`out`"):
        WITH_GRAD(x, np.array([0, 1, 2, 3]), out=out, backend=backend)
    assert np.all(out == 7.0)


@pytest.mark.parametrize("go", [np.ones(3), np.ones((4, 1)), np.ones(()), 1.0],
                         ids=["short", "2d", "0d", "float"])
def test_grad_output_wrong_shape_for_none(go, backend):
    """reduction="none" needs grad_output of the loss's shape: ValueError naming it,
    and an out=input buffer is left untouched."""
    x = np.arange(20.0).reshape(4, 5)
    buf = x.copy()
    with pytest.raises(ValueError, match="grad_output"):
        WITH_GRAD(buf, np.array([0, 1, 2, 3]), reduction="none", grad_output=go, out=buf,
                  backend=backend)
    np.testing.assert_array_equal(buf, x)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("go", [np.ones(4), [1.0, 2.0], "one", None.__class__],
                         ids=["array", "list", "str", "type"])
def test_grad_output_not_scalar_for_reduced(go, reduction, backend):
    """A reduced loss needs a scalar grad_output: TypeError naming it."""
    x = np.zeros((4, 5))
    with pytest.raises(TypeError, match="grad_output"):
        WITH_GRAD(x, np.array([0, 1, 2, 3]), reduction=reduction, grad_output=go, backend=backend)
