"""The OpenCL engine: pyopencl arrays through the public API, and its row kernel.

CI installs pyopencl and PoCL (a CPU OpenCL device): on Linux x86_64, where
PoCL has a pip wheel, a missing pyopencl or OpenCL device fails this module,
it never skips it; elsewhere the module is skipped without pyopencl. Results are checked for
type (a ``pyopencl.array.Array`` on the caller's queue), shape and dtype
before values, against the float64 reference and torch, with the accuracy
bar of the other engines' tests.

PoCL compiles each kernel on first use; the engine memoizes its programs, so
the cost is paid once per dtype in this module.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.importorskip("pyopencl", reason="the test extras bring PoCL on Linux x86_64 only")
import pyopencl as cl  # noqa: E402
import pyopencl.array as cla  # noqa: E402
import torch
from reference import (
    REDUCTIONS,
    options_reference,
    options_tolerance,
    assert_within,
    ce_expected,
    class_axis,
    class_count_case,
    eps_of,
    grad_tolerance,
    log_softmax_ref,
    logsumexp_ref,
    make_case,
    make_logits,
    make_soft_targets,
    make_targets,
    make_weight,
    nll_expected,
    softmax_family_tolerance,
    softmax_ref,
    torch_reference,
)
from scipy.special import expit, softmax
from sklearn.metrics import log_loss as sk_log_loss
from test_cross_entropy import (
    INF_ROWS,
    NORMAL_ROW,
    SHAPES,
    SMOOTHINGS,
    SOFT_INF_ROWS,
    shape_id,
    target_shape,
    torch_ce,
    torch_nll,
)
from test_grad import LAYOUTS, make_grad_output, make_problem
from test_log_loss import RTOL, outcome, random_proba

import xentc
from xentc import _dispatch
from xentc._engines import RowJob, _opencl_runtime, opencl


@pytest.fixture(scope="module")
def queue():
    """A queue on the default OpenCL device (``PYOPENCL_CTX`` may name it)."""
    assert opencl.devices(), ("no OpenCL device found; pip install 'xentc[opencl]' "
                              "installs PoCL, which gives a CPU device")
    # The context is held here until the module ends: a queue does not keep
    # its Python object, and Intel's CPU runtime refuses `queue.context` (what
    # pyopencl arrays ask for) once no one holds it (INVALID_CONTEXT).
    context = cl.create_some_context(interactive=False)
    yield cl.CommandQueue(context)


@pytest.fixture(scope="module", autouse=True, params=[None, 1, 2, 4, 8, 16],
                ids=lambda w: f"vec{w or 'auto'}")
def vector_width(request):
    """The whole module once with the engine's own vector width, then with each
    width a device may pick forced (``XENTC_OPENCL_VEC``): every width's
    kernel text runs on every machine. A width this device cannot build is
    refused by its probe child and a narrower one taken
    (tests/test_opencl_build.py), so none can take the run down."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param:
            mp.setenv("XENTC_OPENCL_VEC", str(request.param))
        opencl.clear_cache()
        yield request.param
    opencl.clear_cache()


@pytest.fixture(params=["device_layout", "lanes_per_row"])
def row_layout(request, monkeypatch):
    """The engine's layout of rows on work-items for this device, then (on a CPU
    device, which takes a row per work-item) the GPU one: lanes per row from
    1 to the group, their trees, partial strides."""
    if request.param == "lanes_per_row":
        monkeypatch.setattr(opencl, "_CPU_ROW_PER_ITEM", False)
    return request.param


@pytest.fixture
def scalar_build(monkeypatch):
    """The kernels built with VEC = 1, as for GPUs (plain scalars, no vector
    loads), whatever this device prefers; the cache is dropped on both sides."""
    opencl.clear_cache()
    monkeypatch.setenv("XENTC_OPENCL_VEC", "1")
    monkeypatch.setattr(opencl, "_CPU_ROW_PER_ITEM", False)
    yield
    opencl.clear_cache()


def dev(queue, a):
    """`a` (NumPy) as a pyopencl array on `queue`; None stays None."""
    return None if a is None else cla.to_device(queue, np.asarray(a, order="C"))


def read(queue, got, dtype, shape, what="result"):
    """The values of a result that must be a pyopencl array on `queue` of `dtype` and `shape`."""
    assert isinstance(got, cla.Array), f"{what}: got {type(got)!r}, want a pyopencl array"
    assert got.queue == queue, f"{what}: result is on another queue"
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    assert got.shape == tuple(shape), f"{what}: shape {got.shape} != {tuple(shape)}"
    return got.get()


def check_ce(queue, x, t, dtype, weight=None, torch_too=True, **kw):
    """cross_entropy on pyopencl arrays against the reference (and torch)."""
    got = xentc.cross_entropy(dev(queue, x), dev(queue, t), dev(queue, weight), **kw)
    want, tol = ce_expected(x, t, dtype, weight=weight, **kw)
    values = read(queue, got, dtype, np.shape(want))
    assert_within(values, want, tol, "vs reference")
    if torch_too:
        assert_within(values, torch_ce(x, t, weight=weight, **kw), tol, "vs torch")
    return values


# ---------------------------------------------------------------------------
# conformance: the cases of test_cross_entropy, on the device
# ---------------------------------------------------------------------------


# Weights and ignore_index as pairs: each is exercised with every shape and
# smoothing, at a third of the full product's device calls.
WEIGHT_IGNORE = {"unweighted-no_ignored": (False, None), "weighted-ignored_default": (True, -100),
                 "weighted-ignored_class3": (True, 3)}


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("weight_ignore", list(WEIGHT_IGNORE))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_class_targets(shape, weight_ignore, smoothing, dtype, queue, rng):
    weighted, ignore = WEIGHT_IGNORE[weight_ignore]
    n_classes = shape[class_axis(len(shape))]
    x = make_logits(rng, shape, dtype)
    t = make_targets(rng, target_shape(shape), n_classes, ignore_index=ignore)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    for reduction in REDUCTIONS:
        check_ce(queue, x, t, dtype, weight=w, ignore_index=-100 if ignore is None else ignore,
                 reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("n_classes", [5, 700])
def test_llm_options_on_device_arrays(n_classes, dtype, queue, rng):
    """softcap, logit_scale, the z-loss, sample_weight and lse of pyopencl arrays,
    results and gradient (in place) on the device, against torch float64."""
    x = make_logits(rng, (12, n_classes), dtype)
    t = make_targets(rng, (12,), n_classes, ignore_index=-100)
    sw = rng.uniform(0.0, 2.0, 12).astype(dtype)
    opts = dict(logit_scale=1.3, softcap=6.0, lse_square_scale=1e-2, label_smoothing=0.1)
    want = options_reference(x, t, sample_weight=sw, **opts)
    tols = options_tolerance(x, t, dtype, sample_weight=sw, **opts)
    xd = cla.to_device(queue, x)
    got = xentc.cross_entropy_with_grad(xd, cla.to_device(queue, t),
                                        sample_weight=cla.to_device(queue, sw), out=xd,
                                        return_z_loss=True, return_lse=True, **opts)
    assert got[3] is xd and all(isinstance(a, cla.Array) for a in got)
    for name, g, w, tol in zip(("loss", "z_loss", "lse", "grad"), got, want,
                               (tols[0], tols[0], tols[1], tols[2])):
        assert_within(g.get(), w, tol + 8 * np.finfo(dtype).eps * np.abs(w), name)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_soft_targets(shape, weighted, smoothing, dtype, queue, rng):
    n_classes = shape[class_axis(len(shape))]
    x = make_logits(rng, shape, dtype)
    q = make_soft_targets(rng, shape, dtype)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    for reduction in REDUCTIONS:
        check_ce(queue, x, q, dtype, weight=w, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("axis", [-1, 2, 0, -3, 1])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_axis(axis, soft, dtype, queue, rng):
    shape = (2, 5, 11)
    x, w, t, kw = make_case(rng, shape, axis, dtype, soft)
    for reduction in REDUCTIONS:
        check_ce(queue, x, t, dtype, weight=w, reduction=reduction, label_smoothing=0.1,
                 axis=axis, **kw)


# Lanes per row go from 1 (a row per work-item) to the whole work-group, with
# partial strides at the ends of rows.
@pytest.mark.parametrize("n_classes", [1, 3, 9, 17, 255, 257, 2049, 50000])
@pytest.mark.parametrize("variant", ["plain", "smoothed_weighted", "soft"])
def test_class_counts(n_classes, variant, dtype, row_layout, queue, rng):
    check_class_count(queue, rng, n_classes, variant, dtype)


def check_class_count(queue, rng, n_classes, variant, dtype):
    """Three rows of `n_classes`: every reduction against the reference."""
    x, t, kw = class_count_case(rng, n_classes, variant, dtype)
    for reduction in REDUCTIONS:
        check_ce(queue, x, t, dtype, torch_too=False, reduction=reduction, **kw)


@pytest.mark.parametrize("shape", [(4096, 3), (2048, 10), (300, 1000), (8, 50000)], ids=shape_id)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_equals_the_c_core(shape, soft, dtype, row_layout, queue, rng):
    """Many rows per group (small C) and a group per row (large C): per-row losses
    and log-sum-exps within the accuracy bar of the C core's."""
    x = make_logits(rng, shape, dtype, scale=6.0)
    w = make_weight(rng, shape[1], dtype)
    t = (make_soft_targets(rng, shape, dtype) if soft
         else make_targets(rng, shape[:1], shape[1], ignore_index=-100))
    kw = {"reduction": "none", "label_smoothing": 0.1}
    c_core = xentc.cross_entropy(x, t, w, backend="cpu", **kw)
    got = read(queue, xentc.cross_entropy(dev(queue, x), dev(queue, t), dev(queue, w), **kw),
               dtype, shape[:1])
    _, tol = ce_expected(x, t, dtype, weight=w, ulps=8, rtol=0.0, **kw)
    assert_within(got, c_core, tol, "opencl vs C core")
    lse = read(queue, xentc.logsumexp(dev(queue, x)), dtype, shape[:1])
    assert_within(lse, xentc.logsumexp(x, backend="cpu"),
                  softmax_family_tolerance("logsumexp", x, -1, dtype), "logsumexp vs C core")


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_huge_logits(soft, dtype, queue, rng):
    """Logits of +-1e4: no overflow; rows whose target sits at -1e4 too."""
    shape = (6, 9)
    x = (np.where(rng.random(shape) < 0.5, -1e4, 1e4) + rng.standard_normal(shape)).astype(dtype)
    w = make_weight(rng, 9, dtype)
    t = make_soft_targets(rng, shape, dtype) if soft else np.argmin(x, axis=1)
    for reduction in REDUCTIONS:
        check_ce(queue, x, t, dtype, weight=w, reduction=reduction, label_smoothing=0.1)


# The extremes of width and signedness: each dtype compiles its own kernels.
@pytest.mark.parametrize("tdtype", [np.int8, np.int32, np.uint8, np.uint64],
                         ids=lambda d: np.dtype(d).name)
def test_integer_target_dtypes(tdtype, queue, rng):
    n_classes = 300  # > 255, so uint8 255 is a valid class and must not wrap
    x = make_logits(rng, (12, n_classes), np.float32)
    top = min(n_classes, np.iinfo(tdtype).max + 1)
    t = rng.integers(0, top, size=12)
    t[0] = top - 1
    ignore_index = -100 if np.issubdtype(tdtype, np.signedinteger) else 5
    t[1] = ignore_index
    for reduction in REDUCTIONS:
        check_ce(queue, x, t.astype(tdtype), np.float32, reduction=reduction,
                 ignore_index=ignore_index, label_smoothing=0.1)


@pytest.mark.parametrize("shape", [(0, 5), (2, 5, 0), (0, 5, 3)], ids=shape_id)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_empty_batch(shape, soft, dtype, queue):
    """torch: sum -> 0, mean -> nan, none -> empty."""
    x = np.zeros(shape, dtype)
    t = np.zeros(shape, dtype) if soft else np.zeros(target_shape(shape), np.int64)
    for reduction in REDUCTIONS:
        got = xentc.cross_entropy(dev(queue, x), dev(queue, t), reduction=reduction)
        want = torch_ce(x, t, reduction=reduction)
        assert_within(read(queue, got, dtype, np.shape(want)), want, 0.0, reduction)


# ---------------------------------------------------------------------------
# non-finite values, as torch
# ---------------------------------------------------------------------------


def check_every_reduction_against_torch(queue, x, t, w, smoothing, dtype):
    """Per row ("none": each pattern on its own row) and reduced, as torch."""
    eps = eps_of(dtype)
    for reduction in REDUCTIONS:
        kw = {"weight": w, "reduction": reduction, "label_smoothing": smoothing}
        want = torch_ce(x, t, **kw)
        got = xentc.cross_entropy(dev(queue, x), dev(queue, t), dev(queue, w),
                                  reduction=reduction, label_smoothing=smoothing)
        assert_within(read(queue, got, dtype, np.shape(want)), want,
                      64 * eps * (1.0 + np.abs(want)), reduction)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_non_finite_class_targets_match_torch(smoothing, weighted, dtype, row_layout, queue):
    """Every pattern of test_cross_entropy on its own row, among normal rows:
    rows that share a work-group must not leak into each other."""
    check_non_finite_rows(queue, smoothing, weighted, dtype)


def check_non_finite_rows(queue, smoothing, weighted, dtype):
    rows = [INF_ROWS[p] for p in INF_ROWS] + [NORMAL_ROW] * 5
    x = np.array([r for r, _ in rows] * 2, dtype)
    t = np.array([y for _, y in rows] * 2)
    w = np.array([0.5, 1.0, 2.0, 3.0], dtype) if weighted else None
    check_every_reduction_against_torch(queue, x, t, w, smoothing, dtype)
    got = read(queue, xentc.logsumexp(dev(queue, x)), dtype, x.shape[:1])
    want = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), 1).numpy()
    np.testing.assert_allclose(got, want.astype(dtype), rtol=8 * eps_of(dtype))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_non_finite_soft_targets_match_torch(smoothing, dtype, queue):
    rows = list(SOFT_INF_ROWS.values()) + [(NORMAL_ROW[0], [0.1, 0.2, 0.3, 0.4])] * 3
    x = np.array([r for r, _ in rows], dtype)
    t = np.array([q for _, q in rows], dtype)
    check_every_reduction_against_torch(queue, x, t, np.array([0.5, 1.0, 2.0, 3.0], dtype),
                                        smoothing, dtype)


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_nan_row_poisons_only_that_row(soft, dtype, row_layout, queue, rng):
    """One NaN in a long row (a work-group per row): that row only."""
    x = make_logits(rng, (6, 3000), dtype)
    x[2, 1517] = np.nan
    w = make_weight(rng, 3000, dtype)
    t = make_soft_targets(rng, x.shape, dtype) if soft else make_targets(rng, (6,), 3000)
    got = read(queue, xentc.cross_entropy(dev(queue, x), dev(queue, t), dev(queue, w),
                                          reduction="none", label_smoothing=0.1), dtype, (6,))
    assert np.isnan(got[2])
    keep = np.arange(6) != 2
    want, tol = ce_expected(x[keep], t[keep], dtype, reduction="none", weight=w,
                            label_smoothing=0.1)
    assert_within(got[keep], want, tol)


# ---------------------------------------------------------------------------
# nll_loss and the softmax family
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weight_ignore", list(WEIGHT_IGNORE))
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_nll_loss(shape, weight_ignore, dtype, queue, rng):
    weighted, ignore = WEIGHT_IGNORE[weight_ignore]
    ax = class_axis(len(shape))
    x = log_softmax_ref(make_logits(rng, shape, np.float64), axis=ax).astype(dtype)
    t = make_targets(rng, target_shape(shape), shape[ax], ignore_index=ignore)
    w = make_weight(rng, shape[ax], dtype) if weighted else None
    for reduction in REDUCTIONS:
        kw = {"ignore_index": -100 if ignore is None else ignore, "reduction": reduction}
        got = xentc.nll_loss(dev(queue, x), dev(queue, t), dev(queue, w), **kw)
        want, tol = nll_expected(x, t, dtype, weight=w, **kw)
        values = read(queue, got, dtype, np.shape(want))
        assert_within(values, want, tol, "vs reference")
        assert_within(values, torch_nll(x, t, weight=w, **kw), tol, "vs torch")


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("n_classes", [6, 1031])
def test_softmax_family(axis, n_classes, dtype, queue, rng):
    x = make_logits(rng, (4, 6, n_classes) if axis == -1 else (4, n_classes, 5), dtype)
    cx = dev(queue, x)
    for name, fn, ref in (("log_softmax", xentc.log_softmax, log_softmax_ref),
                          ("softmax", xentc.softmax, softmax_ref)):
        got = read(queue, fn(cx, axis=axis), dtype, x.shape, name)
        assert_within(got, ref(x, axis=axis), softmax_family_tolerance(name, x, axis, dtype), name)
    for keepdims in (False, True):
        want = logsumexp_ref(x, axis, keepdims)
        got = read(queue, xentc.logsumexp(cx, axis=axis, keepdims=keepdims), dtype, want.shape)
        assert_within(got, want, softmax_family_tolerance("logsumexp", x, axis, dtype,
                                                          keepdims=keepdims), "logsumexp")


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [3, 10, 300, 5000])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("weighted_smoothed", [False, True], ids=["plain", "weighted_smoothed"])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
def test_grad_kernel_matches_torch(n_classes, soft, weighted_smoothed, in_place, dtype,
                                   row_layout, queue, rng):
    """rows(out_kind="grad"): the gradient of grad_scale * grad_row_scale[i] * loss[i]."""
    check_grad_kernel(queue, rng, n_classes, soft, weighted_smoothed, in_place, dtype)


def check_grad_kernel(queue, rng, n_classes, soft, weighted_smoothed, in_place, dtype):
    targets = "soft" if soft else "ignored"
    smoothing = 0.2 if weighted_smoothed else 0.0
    x, kw = make_problem(rng, (6, n_classes), None, dtype, targets, weighted_smoothed, smoothing)
    row_scale = np.linspace(0.5, 2.0, 6).astype(dtype)
    _, want = torch_reference(x, kw["target"], kw.get("weight"), reduction="none",
                              label_smoothing=smoothing, grad_output=3.0 * row_scale)
    tol = grad_tolerance(x, dtype, kw["target"], kw.get("weight"), reduction="none",
                         grad_output=3.0 * row_scale)
    cx = dev(queue, x)
    args = {"soft": dev(queue, kw["target"])} if soft else {
        "target": dev(queue, kw["target"]), "ignore_index": -100}
    loss, lse, got = opencl.rows(opencl.namespace(cx), RowJob(
        cx, weight=dev(queue, kw.get("weight")), label_smoothing=smoothing, out_kind="grad",
        grad_scale=3.0, grad_row_scale=dev(queue, row_scale), out=cx if in_place else None,
        **args))
    assert lse is None
    if in_place:
        assert got is cx
    values = read(queue, got, dtype, x.shape, "grad")
    assert_within(values, want, tol, "grad vs torch")
    if not soft:
        assert np.all(values[kw["target"] == -100] == 0)
    want_loss, loss_tol = ce_expected(x, kw["target"], dtype, reduction="none",
                                      weight=kw.get("weight"), label_smoothing=smoothing)
    assert_within(read(queue, loss, dtype, (6,), "loss"), want_loss, loss_tol, "loss")


def test_scalar_build(scalar_build, queue, rng):
    """The VEC = 1 build that GPUs get, with lanes per row: the forward over every
    lane count, the gradient, and the non-finite rows (float32: one more build);
    the probability pass, and the float64 build (scalar select needs a long mask)."""
    for n_classes in (3, 17, 257, 2049):
        for variant in ("plain", "smoothed_weighted", "soft"):
            check_class_count(queue, rng, n_classes, variant, np.float32)
    for n_classes, soft in ((10, False), (300, True), (5000, False)):
        check_grad_kernel(queue, rng, n_classes, soft, True, True, np.float32)
    check_non_finite_rows(queue, 0.1, True, np.float32)
    for dtype in (np.float32, np.float64):
        for shape in ((5, 3), (3, 2049)):
            check_proba_rows(queue, rng, shape, dtype)
    check_class_count(queue, rng, 257, "smoothed_weighted", np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("targets", ["ignored", "soft"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cross_entropy_with_grad(layout, targets, reduction, dtype, queue, rng):
    """The public fused call on pyopencl arrays, out of place and in place."""
    shape, axis = LAYOUTS[layout]
    x, kw = make_problem(rng, shape, axis, dtype, targets, weighted=True, smoothing=0.1)
    go = make_grad_output(rng, reduction, shape, axis, dtype)
    ref_kw = {k: v for k, v in kw.items() if k != "target"}
    want_loss, want_grad = torch_reference(x, kw["target"], reduction=reduction, grad_output=go,
                                           **ref_kw)
    _, loss_tol = ce_expected(x, kw["target"], dtype, reduction=reduction, **ref_kw)
    tol = grad_tolerance(x, dtype, reduction=reduction, grad_output=go, **kw)
    ckw = {k: dev(queue, v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    cgo = dev(queue, go) if reduction == "none" else go
    cx = dev(queue, x)
    for out in (None, cx):
        loss, grad = xentc.cross_entropy_with_grad(cx, reduction=reduction, grad_output=cgo,
                                                   out=out, **ckw)
        if out is not None:
            assert grad is out
        assert_within(read(queue, loss, dtype, np.shape(want_loss), "loss"), want_loss, loss_tol,
                      "loss")
        assert_within(read(queue, grad, dtype, x.shape, "grad"), want_grad, tol, "grad")


# ---------------------------------------------------------------------------
# layouts, queues, dtypes
# ---------------------------------------------------------------------------


def test_non_contiguous_device_inputs(dtype, queue, rng):
    """Strided and transposed pyopencl views read as their values (copied where needed)."""
    n, c = 9, 37
    x0 = make_logits(rng, (n, c), dtype)
    w0 = make_weight(rng, c, dtype)
    t0 = make_targets(rng, (n,), c, ignore_index=-100)
    views = {
        "transposed": (dev(queue, np.ascontiguousarray(x0.T)).T, x0),
        "every_other_class": (dev(queue, np.repeat(x0, 2, axis=1))[:, ::2], x0),
        "row_offset": (dev(queue, np.pad(x0, ((2, 0), (0, 0))))[2:], x0),
    }
    cw = dev(queue, np.repeat(w0, 2))[::2]
    ct = dev(queue, np.repeat(t0, 2))[::2]
    want, tol = ce_expected(x0, t0, dtype, weight=w0, reduction="none", label_smoothing=0.1)
    for name, (cx, _) in views.items():
        got = xentc.cross_entropy(cx, ct, cw, reduction="none", label_smoothing=0.1)
        assert_within(read(queue, got, dtype, (n,), name), want, tol, name)
    # The class axis first: rows are gathered from strided memory.
    cx = dev(queue, np.ascontiguousarray(x0.T))
    got = read(queue, xentc.log_softmax(cx, axis=0), dtype, (c, n))
    assert_within(got, log_softmax_ref(x0.T, axis=0),
                  softmax_family_tolerance("log_softmax", x0.T, 0, dtype), "axis 0")


def test_results_on_the_inputs_queue(queue, rng):
    """A second queue of the context: the work and the results are on it."""
    other = cl.CommandQueue(queue.context)
    x = make_logits(rng, (5, 7), np.float32)
    t = make_targets(rng, (5,), 7)
    got = xentc.cross_entropy(dev(other, x), dev(other, t), reduction="none")
    want, tol = ce_expected(x, t, np.float32, reduction="none")
    assert_within(read(other, got, np.float32, (5,)), want, tol)


def test_float64_refused_without_device_support():
    """float64 needs cl_khr_fp64: a device without it gets a TypeError naming it."""
    class NoDouble:
        name = "a device without doubles"
        extensions = "cl_khr_byte_addressable_store"

    with pytest.raises(TypeError, match="cl_khr_fp64.*a device without doubles"):
        _opencl_runtime.check_dtype(NoDouble(), np.float64)
    _opencl_runtime.check_dtype(NoDouble(), np.float32)


def test_float16_storage_kernel(queue, rng):
    """Half logits are read and written with vload_half / vstore_half (no extension
    needed) and summed in float32: loss and lse in float32, outputs in half."""
    x = make_logits(rng, (40, 300), np.float16)
    t = make_targets(rng, (40,), 300)
    w = make_weight(rng, 300, np.float32)
    cx = dev(queue, x)
    loss, lse, out = opencl.rows(opencl.namespace(dev(queue, t)), RowJob(
        cx, target=dev(queue, t), weight=dev(queue, w), label_smoothing=0.1, want_lse=True,
        out_kind="softmax"))
    want, tol = ce_expected(x, t, np.float32, reduction="none", weight=w, label_smoothing=0.1)
    assert_within(read(queue, loss, np.float32, (40,), "loss"), want, tol, "loss")
    assert_within(read(queue, lse, np.float32, (40,), "lse"), logsumexp_ref(x),
                  softmax_family_tolerance("logsumexp", x, -1, np.float32), "lse")
    # float32 arithmetic, then one rounding to half
    assert_within(read(queue, out, np.float16, x.shape, "softmax"), softmax_ref(x),
                  eps_of(np.float16) * softmax_ref(x) + 1e-7, "softmax")


def test_float16_host_arrays(rng):
    """float16 NumPy arrays through backend="opencl" on any device: the loss is
    float16, computed in float32."""
    x, w, t, kw = make_case(rng, (6, 33, 2), None, np.float16, soft=False)
    for reduction in REDUCTIONS:
        got = xentc.cross_entropy(x, t, w, reduction=reduction, label_smoothing=0.1,
                                  backend="opencl", **kw)
        assert isinstance(got, (np.ndarray, np.generic)) and got.dtype == np.float16
        want, tol = ce_expected(x, t, np.float16, reduction=reduction, weight=w,
                                label_smoothing=0.1, ulps=4, **kw)
        assert_within(got, want, tol, reduction)


def test_float16_device_arrays(queue, rng):
    """float16 pyopencl arrays through the API: the API layer's own element-wise
    steps need half arithmetic on the device."""
    if "cl_khr_fp16" not in queue.device.extensions.split():
        with pytest.raises(TypeError, match="cl_khr_fp16"):
            xentc.cross_entropy(dev(queue, np.zeros((2, 3), np.float16)),
                                dev(queue, np.zeros(2, np.int64)))
        pytest.skip(f"{queue.device.name!r} has no cl_khr_fp16 (refusal checked)")
    x, w, t, kw = make_case(rng, (6, 33), None, np.float16, soft=False)
    for reduction in REDUCTIONS:
        got = xentc.cross_entropy(dev(queue, x), dev(queue, t), dev(queue, w.astype(np.float32)),
                                  reduction=reduction, **kw)
        want, tol = ce_expected(x, t, np.float16, reduction=reduction, weight=w, ulps=4, **kw)
        assert_within(read(queue, got, np.float16, np.shape(want)), want, tol, reduction)


# ---------------------------------------------------------------------------
# host arrays, engine choice, errors
# ---------------------------------------------------------------------------


def test_host_arrays_only_when_asked(dtype, queue, rng):
    """backend="opencl" copies NumPy arrays to the device and back (the same
    kernel: the same bits); backend="auto" keeps them on the C core."""
    x = make_logits(rng, (7, 500), dtype)
    t = make_targets(rng, (7,), 500, ignore_index=-100)
    on_device = xentc.cross_entropy(dev(queue, x), dev(queue, t), reduction="none").get()
    from_host = xentc.cross_entropy(x, t, reduction="none", backend="opencl")
    assert isinstance(from_host, np.ndarray) and from_host.dtype == dtype
    np.testing.assert_array_equal(from_host, on_device)
    xp = _dispatch.namespace(x)
    assert _dispatch.engine_for(xp, x, "auto").name == "cpu"
    assert _dispatch.engine_for(xp, x, "opencl").name == "opencl"
    cx = dev(queue, x)
    assert _dispatch.engine_for(_dispatch.namespace(cx), cx, "auto").name == "opencl"


def test_out_of_range_target(queue):
    x = dev(queue, np.zeros((3, 5), np.float32))
    for bad in (7, -3):
        with pytest.raises(IndexError, match=f"`target` value {bad} out of range for 5 classes"):
            xentc.cross_entropy(x, dev(queue, np.array([0, bad, 1])))


def test_mixing_host_and_device_arrays_is_refused(queue):
    x = dev(queue, np.zeros((3, 5), np.float32))
    t = dev(queue, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="to_device"):
        xentc.cross_entropy(x, t, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="to_device"):
        xentc.cross_entropy(x, np.array([0, 1, 2]))


def test_bad_device_arrays(queue):
    x = np.zeros((3, 5), np.float32)
    t = np.array([0, 1, 2])
    other_context = cl.Context(queue.context.devices)
    with pytest.raises(ValueError, match="different OpenCL contexts"):
        xentc.cross_entropy(dev(queue, x), dev(cl.CommandQueue(other_context), t))
    with pytest.raises(ValueError, match="no queue"):
        xentc.cross_entropy(dev(queue, x).with_queue(None), dev(queue, t))
    with pytest.raises(ValueError, match="backend='cpu' cannot serve"):
        xentc.cross_entropy(dev(queue, x), dev(queue, t), backend="cpu")
    cx = dev(queue, x)
    with pytest.raises(ValueError, match="`out`"):
        opencl.rows(opencl.namespace(cx), RowJob(cx, out_kind="softmax", out=dev(queue, x[:2])))
    with pytest.raises(ValueError, match="`out_kind`"):
        RowJob(cx, out_kind="hessian")


def test_without_pyopencl():
    """Without pyopencl: `import xentc` works, no devices are listed, and asking
    for the engine names what to install."""
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "pyopencl" or name.startswith("pyopencl."):
                    raise ImportError("pyopencl is blocked")

        sys.meta_path.insert(0, Block())
        import numpy as np
        import xentc
        from xentc._engines import opencl
        assert opencl.devices() == []
        x = np.zeros((2, 3), np.float32)
        assert float(xentc.cross_entropy(x, np.array([0, 1]))) > 0
        try:
            xentc.cross_entropy(x, np.array([0, 1]), backend="opencl")
        except ImportError as exc:
            print(exc)
    """)
    # `-c` puts the cwd first on sys.path: run away from the source tree.
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    assert 'pip install "xentc[opencl]"' in res.stdout


def test_pyopencl_ctx_names_the_default_device():
    """Host arrays go to the device PYOPENCL_CTX names; one that matches nothing
    gives an error saying so."""
    code = textwrap.dedent("""
        import numpy as np
        import xentc
        try:
            xentc.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 1]), backend="opencl")
        except RuntimeError as exc:
            print(exc)
    """)
    env = dict(os.environ, PYOPENCL_CTX="999")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, check=False, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    assert "cannot open a default OpenCL device" in res.stdout


def test_devices_and_cache(queue, rng):
    """devices() describes what pyopencl finds; clear_cache() drops the programs,
    which are rebuilt to the same bits."""
    found = opencl.devices()
    assert all(isinstance(d, str) for d in found)
    assert any(queue.device.name in d for d in found)
    x = dev(queue, make_logits(rng, (50, 700), np.float32))
    before = xentc.logsumexp(x).get()
    opencl.clear_cache()
    np.testing.assert_array_equal(xentc.logsumexp(x).get(), before)


def test_reductions_are_deterministic_and_accurate(dtype, queue, rng):
    """The device sum runs a fixed tree: the same bits every time, within a
    few ulp of the sum's magnitude."""
    n = 1_000_003
    x = rng.standard_normal(n).astype(dtype)
    xp = opencl.namespace(dev(queue, x))
    cx = dev(queue, x)
    first = read(queue, xp.sum(cx), dtype, ())
    assert all(xp.sum(cx).get() == first for _ in range(3))
    bound = 8 * eps_of(dtype) * np.sqrt(n) * np.sum(np.abs(x.astype(np.float64)))
    assert abs(float(first) - np.sum(x.astype(np.float64))) <= bound


# ---------------------------------------------------------------------------
# log_loss: the probability pass, and scikit-learn's results on the device
# ---------------------------------------------------------------------------


def check_proba_rows(queue, rng, shape, dtype):
    """`proba_rows` on the device against NumPy: exact extremes and picks, sums to
    a few ulp, NaN and infinities anywhere (the last element of a row's partial
    vector included), strided input, and host arrays through the default queue."""
    n, c = shape
    t = rng.integers(0, c, n)
    # All-positive then all-negative entries: padding past a row's end (0 in
    # the sums) must not become the minimum, nor the maximum.
    for low, high in ((0.25, 1.5), (-2.0, -0.5)):
        p = rng.uniform(low, high, shape).astype(dtype)
        lo, hi, total, picked = opencl.proba_rows(None, dev(queue, p), dev(queue, t))
        assert type(lo) is float and type(hi) is float
        assert (lo, hi) == (p.min(), p.max())
        want = p.astype(np.float64).sum(axis=1)
        bound = 2 * c * eps_of(dtype) * np.abs(p.astype(np.float64)).sum(axis=1)
        assert np.all(np.abs(read(queue, total, dtype, (n,), "total") - want) <= bound)
        np.testing.assert_array_equal(read(queue, picked, dtype, (n,), "picked"),
                                      p[np.arange(n), t])
    # Strided rows (every other column of a wider array), no target.
    wide = dev(queue, np.repeat(p, 2, axis=1))[:, ::2]
    lo, hi, total, picked = opencl.proba_rows(None, wide)
    assert (lo, hi) == (p.min(), p.max()) and picked is None
    assert np.all(np.abs(read(queue, total, dtype, (n,), "strided total") - want) <= bound)
    for row, col in ((0, 0), (n - 1, c - 1), (n // 2, c // 2)):
        for bad in (np.nan, np.inf, -np.inf):
            q = p.copy()
            q[row, col] = bad
            lo, hi = opencl.proba_rows(None, dev(queue, q))[:2]
            if np.isnan(bad):
                assert np.isnan(lo) and np.isnan(hi), (row, col)
            else:
                assert (lo, hi) == (q.min(), q.max()), (row, col, bad)
    # A target outside [0, C) reads nothing: NaN.
    bad_t = t.copy()
    bad_t[-1] = c
    picked = opencl.proba_rows(None, dev(queue, p), dev(queue, bad_t))[3].get()
    assert np.isnan(picked[-1]) and np.array_equal(picked[:-1], p[np.arange(n - 1), t[:-1]])
    lo, hi, total, picked = opencl.proba_rows(np, p, t)
    assert isinstance(total, np.ndarray) and total.dtype == dtype and (lo, hi) == (p.min(), p.max())
    np.testing.assert_array_equal(picked, p[np.arange(n), t])


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (33, 7), (4096, 3), (9, 5000)], ids=shape_id)
def test_proba_rows(shape, dtype, row_layout, queue, rng):
    check_proba_rows(queue, rng, shape, dtype)


def test_proba_rows_float16_host_arrays(rng):
    """Half probabilities from the host on any device: read as stored, summed in
    float32, sums and picks back in float16."""
    p = rng.uniform(0, 1, (50, 37)).astype(np.float16)
    t = rng.integers(0, 37, 50)
    lo, hi, total, picked = opencl.proba_rows(np, p, t)
    assert (lo, hi) == (p.min(), p.max())
    assert total.dtype == picked.dtype == np.float16
    np.testing.assert_array_equal(total, p.astype(np.float32).sum(axis=1).astype(np.float16))
    np.testing.assert_array_equal(picked, p[np.arange(50), t])


def assert_log_loss(got, y_true, y_proba, dtype, **kwargs):
    """`got` against scikit-learn's log_loss of the NumPy arrays."""
    assert isinstance(got, float)
    np.testing.assert_allclose(got, sk_log_loss(y_true, y_proba, **kwargs), rtol=RTOL[dtype])


def test_log_loss_of_device_arrays(dtype, queue, rng):
    """pyopencl labels, probabilities and weights give scikit-learn's numbers; labels
    and weights may come from the host (NumPy, lists)."""
    n = 300
    index = rng.integers(0, 5, n)
    index[:5] = np.arange(5)
    proba = random_proba(rng, n, 5, dtype)
    weight = rng.uniform(0, 2, n)
    cy, cp = dev(queue, index), dev(queue, proba)
    assert_log_loss(xentc.log_loss(cy, cp), index, proba, dtype)
    assert_log_loss(xentc.log_loss(cy, cp, sample_weight=dev(queue, weight)), index, proba, dtype,
                    sample_weight=weight)
    assert_log_loss(xentc.log_loss(cy, cp, sample_weight=weight, normalize=False), index, proba,
                    dtype, sample_weight=weight, normalize=False)
    names = np.array(["ant", "bee", "cat", "dog", "eel"])[index]
    assert_log_loss(xentc.log_loss(names, cp), names, proba, dtype)
    # Classes absent from y_true, given by `labels` (host or device).
    sub = proba[:, :3] / proba[:, :3].sum(axis=1, keepdims=True)
    twos = np.where(index % 2, 2, 0)
    for labels in ([0, 1, 2], dev(queue, np.arange(3))):
        assert_log_loss(xentc.log_loss(dev(queue, twos), dev(queue, sub), labels=labels), twos,
                        sub, dtype, labels=[0, 1, 2])
    # Binary: the second class's probability as a 1-D array.
    p_yes = rng.uniform(0, 1, n).astype(dtype)
    yes = np.array(["no", "yes"])[index % 2]
    assert_log_loss(xentc.log_loss(yes, dev(queue, p_yes)), yes, p_yes, dtype)
    # Multilabel indicators.
    indicator = (rng.random((n, 5)) < 0.4).astype(np.int64)
    assert_log_loss(xentc.log_loss(dev(queue, indicator), cp), indicator, proba, dtype)


def test_log_loss_from_logits_on_the_device(dtype, queue, rng):
    n = 200
    index = rng.integers(0, 6, n)
    x = (rng.standard_normal((n, 6)) * 3).astype(dtype)
    weight = rng.uniform(0, 2, n)
    got = xentc.log_loss(dev(queue, index), dev(queue, x), sample_weight=dev(queue, weight),
                         from_logits=True)
    assert_log_loss(got, index, softmax(x.astype(np.float64), axis=1), dtype,
                    sample_weight=weight)
    s = (rng.standard_normal(n) * 4).astype(dtype)
    got = xentc.log_loss(dev(queue, index % 2), dev(queue, s), from_logits=True)
    assert_log_loss(got, index % 2, expit(s.astype(np.float64)), dtype)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="^Input contains NaN.$"):
        xentc.log_loss(dev(queue, index), dev(queue, x), from_logits=True)


DEVICE_BAD = {
    "above_one": [[.2, 1.5], [.6, .4], [.5, .5]],
    "below_zero": [[.2, -.5], [.6, .4], [.5, .5]],
    "nan": [[.2, .8], [.6, .4], [np.nan, .5]],
    "inf_and_nan": [[.2, np.inf], [.6, .4], [np.nan, .5]],
    "neg_inf": [[.2, .8], [-np.inf, .4], [.5, .5]],
    "not_summing_to_one": [[.2, .7], [.6, .4], [.5, .5]],
}


@pytest.mark.parametrize("case", DEVICE_BAD)
def test_log_loss_errors_and_warnings_on_the_device(case, dtype, queue):
    """Bad probabilities on the device: scikit-learn's errors, messages and warnings."""
    y_true, proba = np.array([0, 1, 1]), np.array(DEVICE_BAD[case], dtype)
    want = outcome(sk_log_loss, y_true, proba)
    got = outcome(xentc.log_loss, dev(queue, y_true), dev(queue, proba))
    assert got[1] == want[1]
    assert got[0][0] == want[0][0]
    if want[0][0] == "error":
        assert got == want
    else:
        np.testing.assert_allclose(got[0][1], want[0][1], rtol=RTOL[dtype])


def test_log_loss_host_arrays_with_opencl_backend(dtype, monkeypatch, rng):
    """backend="opencl" reads host probabilities on the default device (the pass
    does run there) and gives scikit-learn's numbers; bfloat16 goes as float32."""
    ran = []
    device_proba = opencl._device_proba
    monkeypatch.setattr(opencl, "_device_proba", lambda *a: ran.append(1) or device_proba(*a))
    index = rng.integers(0, 4, 100)
    proba = random_proba(rng, 100, 4, dtype)
    weight = rng.uniform(0, 2, 100)
    got = xentc.log_loss(index, proba, sample_weight=weight, backend="opencl")
    assert ran
    assert_log_loss(got, index, proba, dtype, sample_weight=weight)
    half = proba.astype(np.float16)
    assert_log_loss(xentc.log_loss(index, half, backend="opencl"), index, half, np.float16)
    with pytest.raises(ValueError, match="^y_prob contains values greater than 1: 2.0$"):
        xentc.log_loss(index, np.full((100, 4), 2.0, dtype), backend="opencl")
    bf16, t = torch.from_numpy(proba).to(torch.bfloat16), torch.from_numpy(index)
    ran.clear()
    got = xentc.log_loss(t, bf16, backend="opencl")
    assert ran and got == xentc.log_loss(t, bf16, backend="cpu")
    total, picked = opencl.proba_rows(_dispatch.namespace(bf16), bf16, t)[2:]
    assert total.dtype == picked.dtype == torch.bfloat16
    assert torch.equal(picked, bf16[torch.arange(100), t])


def test_log_loss_never_copies_device_arrays_to_the_host(queue):
    """Host labels and weights may go to the device; device ones never come back
    for host probabilities, whatever the backend."""
    y, p = np.array([0, 1, 1]), np.array([[.2, .8], [.6, .4], [.5, .5]])
    for backend in ("auto", "opencl"):
        with pytest.raises(TypeError, match="to_device"):
            xentc.log_loss(dev(queue, y), p, backend=backend)
        with pytest.raises(TypeError, match="to_device"):
            xentc.log_loss(y, p, sample_weight=dev(queue, np.ones(3)), backend=backend)


def test_log_loss_without_float64_on_the_device(queue, monkeypatch, rng):
    """A device without cl_khr_fp64: the sums run in float32 (host float64 weights
    become float32 on the way) rather than fail."""
    monkeypatch.setattr(_opencl_runtime, "has_fp64", lambda device: False)
    index = rng.integers(0, 3, 100)
    proba = random_proba(rng, 100, 3, np.float32)
    weight = rng.uniform(0, 2, 100)
    cp = dev(queue, proba)
    with pytest.raises(TypeError, match="cl_khr_fp64"):
        opencl.namespace(cp).astype(cp, np.float64)
    got = xentc.log_loss(dev(queue, index), cp, sample_weight=weight)
    assert_log_loss(got, index, proba, np.float32, sample_weight=weight)


# ---------------------------------------------------------------------------
# the namespace itself
# ---------------------------------------------------------------------------


def test_namespace_functions(queue, rng):
    """The array-API functions the API layer calls, against NumPy."""
    a = rng.integers(-5, 9, size=(4, 6)).astype(np.int64)
    f = rng.standard_normal((4, 6)).astype(np.float32)
    ca, cf = dev(queue, a), dev(queue, f)
    xp = opencl.namespace(ca, cf)
    assert xp == opencl.namespace(dev(cl.CommandQueue(queue.context), a))
    assert xp.isdtype(xp.float32, "real floating") and xp.isdtype(np.int8, "integral")
    assert xp.isdtype(np.uint16, ("bool", "unsigned integer")) and not xp.isdtype(np.int8, "bool")
    np.testing.assert_array_equal(read(queue, xp.moveaxis(ca, 0, -1), np.int64, (6, 4)), a.T)
    assert xp.moveaxis(ca, 0, -1).flags.c_contiguous
    np.testing.assert_array_equal(xp.reshape(ca, (-1,)).get(), a.reshape(-1))
    with pytest.raises(ValueError, match="copy"):
        xp.reshape(ca.T, (-1,), copy=False)
    np.testing.assert_array_equal(xp.expand_dims(ca, axis=1).get(), a[:, None])
    np.testing.assert_array_equal(xp.astype(ca, np.float32).get(), a.astype(np.float32))
    assert xp.astype(ca, np.int64, copy=False) is ca
    np.testing.assert_array_equal(xp.where(ca > 0, ca, 0).get(), np.where(a > 0, a, 0))
    assert int(xp.min(ca)) == a.min() and int(xp.max(ca)) == a.max()
    np.testing.assert_array_equal(read(queue, xp.min(cf, axis=0), np.float32, (6,)), f.min(0))
    assert read(queue, xp.sum(ca), np.int64, ()) == a.sum()
    np.testing.assert_allclose(read(queue, xp.sum(cf, axis=1), np.float32, (4,)), f.sum(1),
                               rtol=1e-6)
    assert read(queue, xp.count_nonzero(ca), np.int64, ()) == np.count_nonzero(a)
    assert xp.count_nonzero(cf).get() == np.count_nonzero(f)
    idx = np.array([5, 0, 3, 3])
    np.testing.assert_array_equal(xp.take(dev(queue, f[0]), dev(queue, idx)).get(), f[0][idx])
    np.testing.assert_array_equal(
        xp.take_along_axis(cf, dev(queue, idx[:, None]), axis=1).get(),
        np.take_along_axis(f, idx[:, None], axis=1))
    np.testing.assert_array_equal(xp.full_like(cf, np.nan).get(), np.full_like(f, np.nan))
    np.testing.assert_array_equal(xp.ones_like(ca, dtype=xp.bool).get(), np.ones((4, 6), np.int8))
    assert xp.asarray(2.5, dtype=np.float32).get() == np.float32(2.5)
    assert not hasattr(xp, "cumulative_sum")
    with pytest.raises(NotImplementedError, match="backend='generic' cannot serve"):
        xp.sum(cf, axis=1, keepdims=True)


def test_namespace_functions_for_log_loss(queue, rng):
    """What log_loss adds to the namespace, against NumPy: NaN propagates through
    maximum and clip; sets and whole-array all / any give their values."""
    f = rng.uniform(-1, 2, (5, 4)).astype(np.float32)
    f[1, 2], f[3, 0], f[4, 3] = np.nan, np.inf, -np.inf
    cf = dev(queue, f)
    xp = opencl.namespace(cf)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(read(queue, xp.isnan(cf), np.int8, f.shape), np.isnan(f))
        np.testing.assert_array_equal(xp.isinf(cf).get(), np.isinf(f))
        np.testing.assert_array_equal(xp.isnan(dev(queue, np.arange(3))).get(), [0, 0, 0])
        np.testing.assert_array_equal(read(queue, xp.clip(cf, 0.1, 0.9), np.float32, f.shape),
                                      np.clip(f, np.float32(0.1), np.float32(0.9)))
        np.testing.assert_array_equal(xp.maximum(cf, dev(queue, f[::-1])).get(),
                                      np.maximum(f, f[::-1]))
        np.testing.assert_allclose(xp.log(cf).get(), np.log(f), rtol=2e-7)
    assert bool(xp.any(xp.isnan(cf))) and not bool(xp.all(xp.isnan(cf)))
    assert bool(xp.all(cf)) and not bool(xp.any(xp.zeros_like(cf)))  # NaN counts as true
    with pytest.raises(NotImplementedError):
        xp.all(cf, axis=0)
    np.testing.assert_array_equal(read(queue, xp.concat([cf, cf[:, :1]], axis=1), np.float32,
                                       (5, 5)), np.concatenate([f, f[:, :1]], axis=1))
    a = rng.integers(-3, 3, (2, 9))
    ca = dev(queue, a)
    mixed = xp.concat([xp.astype(ca, np.int32), ca], axis=0)
    np.testing.assert_array_equal(read(queue, mixed, np.int64, (4, 9)), np.concatenate([a, a]))
    with pytest.raises(ValueError, match="other axes"):
        xp.concat([ca, cf], axis=0)
    values, inverse = xp.unique_inverse(ca)
    want_values, want_inverse = np.unique(a, return_inverse=True)
    np.testing.assert_array_equal(read(queue, values, np.int64, want_values.shape), want_values)
    np.testing.assert_array_equal(read(queue, inverse, np.int64, a.shape),
                                  want_inverse.reshape(a.shape))
    np.testing.assert_array_equal(xp.unique_values(ca).get(), want_values)
    assert xp.finfo(cf).eps == xp.finfo(np.float32).eps == np.finfo(np.float32).eps
