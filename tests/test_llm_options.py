"""The row options of large-vocabulary training: logit_scale, softcap, the
z-loss (lse_square_scale, return_z_loss), return_lse and sample_weight.

Every engine, dtype and target kind is checked against the option formula
differentiated by torch autograd in float64 (``reference.options_reference``),
loss, z-loss, lse and gradient, alone and combined with weights,
ignore_index, smoothing, K-dimensional input and every reduction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xentc
import xentc.torch
from conftest import BACKENDS
from reference import (assert_within, eps_of, make_case, options_reference,
                       options_tolerance)

OPTIONS = {
    "scale": dict(logit_scale=0.37),
    "softcap": dict(softcap=5.0),
    "zloss": dict(lse_square_scale=1e-2),
    "sample_weight": dict(sample_weight=True),
    "all": dict(logit_scale=2.5, softcap=30.0, lse_square_scale=1e-3, sample_weight=True),
}


def _with_arrays(rng, opts, lead):
    """`opts` with sample_weight=True replaced by random row weights of shape `lead`."""
    opts = dict(opts)
    if opts.get("sample_weight") is True:
        opts["sample_weight"] = rng.uniform(0.0, 2.0, lead)
    return opts


def check(got, want, tols, what):
    """Results (loss, z_loss, lse, grad) against the reference, each in its tolerance."""
    loss_tol, lse_tol, grad_tol = tols
    for name, g, w, tol in zip(("loss", "z_loss", "lse", "grad"), got, want,
                               (loss_tol, loss_tol, lse_tol, grad_tol)):
        w = np.asarray(w)
        # sums of float32 rows round once more per reduction step
        tol = tol + 8 * eps_of(np.asarray(g).dtype) * np.abs(w)
        assert_within(g, w, tol, f"{what}: {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n_classes", [1, 7, 300, 5000])
def test_each_option_matches_torch_autograd(backend, option, soft, reduction, n_classes, dtype,
                                            rng):
    x, w, t, kw = make_case(rng, (24, n_classes), None, dtype, soft)
    opts = _with_arrays(rng, OPTIONS[option], (24,))
    kw.update(weight=w, label_smoothing=0.1, reduction=reduction, **opts)
    want = options_reference(x, t, **kw)
    sw = kw.pop("sample_weight", None)
    got = xentc.cross_entropy_with_grad(
        x, t, backend=backend, return_z_loss=True, return_lse=True,
        sample_weight=None if sw is None else sw.astype(dtype), **kw)
    assert all(np.asarray(a).dtype == dtype for a in got)
    check(got, want, options_tolerance(x, t, dtype, sample_weight=sw, **kw), option)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_k_dimensional_input_with_every_option(backend, soft, dtype, rng):
    x, w, t, kw = make_case(rng, (3, 40, 2, 5), None, dtype, soft)
    opts = _with_arrays(rng, OPTIONS["all"], (3, 2, 5))
    kw.update(weight=w, label_smoothing=0.05, reduction="none", **opts)
    go = rng.uniform(0.5, 1.5, (3, 2, 5))
    want = options_reference(x, t, grad_output=go, **kw)
    sw = kw.pop("sample_weight")
    got = xentc.cross_entropy_with_grad(x, t, backend=backend, return_z_loss=True,
                                        return_lse=True, grad_output=go.astype(dtype),
                                        sample_weight=sw.astype(dtype), **kw)
    assert got[2].shape == (3, 2, 5) and got[3].shape == x.shape
    check(got, want, options_tolerance(x, t, dtype, sample_weight=sw, grad_output=go, **kw),
          "K-dim")


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_alone_and_return_order(backend, rng):
    x, w, t, kw = make_case(rng, (16, 50), None, np.float64, False)
    opts = dict(softcap=4.0, lse_square_scale=0.1)
    loss = xentc.cross_entropy(x, t, backend=backend, **opts)
    loss_z, z = xentc.cross_entropy(x, t, backend=backend, return_z_loss=True, **opts)
    loss_l, lse = xentc.cross_entropy(x, t, backend=backend, return_lse=True, **opts)
    want, want_z, want_lse, _ = options_reference(x, t, **opts)
    for got in (loss, loss_z, loss_l):
        assert math.isclose(float(got), want, rel_tol=1e-12)
    assert math.isclose(float(z), want_z, rel_tol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-13, atol=1e-13)
    assert np.all(lse[t == -100] == 0)


@pytest.mark.parametrize("case", ["long", "in_place"])
def test_softcap_gradient_in_place_and_across_blocks(case, rng):
    # 20000 classes: several of the C kernel's blocks per row; in place: the
    # gradient overwrites the logits the transform read.
    x = rng.standard_normal((6, 20000)).astype(np.float32) * 8
    x[2, 12345] = 60.0  # a late block raises the row's max
    t = rng.integers(0, 20000, 6)
    want = options_reference(x, t, softcap=15.0, logit_scale=1.3)
    buf = x.copy()
    loss, grad = xentc.cross_entropy_with_grad(
        buf, t, softcap=15.0, logit_scale=1.3, out=buf if case == "in_place" else None)
    tols = options_tolerance(x, t, np.float32, softcap=15.0, logit_scale=1.3)
    assert_within(loss, want[0], tols[0] + 8 * eps_of(np.float32) * abs(want[0]), "loss")
    assert_within(grad, want[3], tols[2], "grad")
    assert (grad is buf) == (case == "in_place")


@pytest.mark.parametrize("softcap", [43.0, 44.0, 200.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_either_side_of_the_exp_range(backend, softcap, dtype, rng):
    # Up to softcap 43.5, z - max(z) >= -87 stays in float32's exp range and
    # the C core skips its clamp; past it, wide logits reach exps that
    # underflow (and must be 0, not garbage, in the gradient).
    x = (rng.standard_normal((5, 3000)) * 300).astype(dtype)
    x[1, 7] = -np.inf
    t = rng.integers(0, 3000, 5)
    want = options_reference(x, t, softcap=softcap, reduction="none")
    got = xentc.cross_entropy_with_grad(x, t, softcap=softcap, reduction="none",
                                        return_lse=True, backend=backend)
    tols = options_tolerance(x, t, dtype, softcap=softcap, reduction="none")
    assert_within(got[0], want[0], tols[0], "loss")
    assert_within(got[1], want[2], tols[1], "lse")
    assert_within(got[2], want[3], tols[2], "grad")


@pytest.mark.parametrize("n_classes", [4, 1500])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_saturates_instead_of_overflowing(backend, n_classes, dtype):
    # tanh caps infinite logits to +-softcap: the loss stays finite and the
    # gradient of a saturated logit is 0, as torch's; on both sides.
    x = np.zeros((3, n_classes), dtype)
    x[0, :4] = [np.inf, 0.0, -np.inf, 1.0]
    x[1, :4] = [1e30, -1e30, 2.0, 0.5]
    x[2, :] = -200.0
    t = np.array([1, 2, 0])
    loss, grad = xentc.cross_entropy_with_grad(x, t, softcap=10.0, backend=backend)
    want_loss, _, _, want_grad = options_reference(x, t, softcap=10.0)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    assert math.isclose(float(loss), want_loss, rel_tol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * 1e-3)
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[1, 1] == 0


# Long rows (streamed transform) and short ones (a scratch buffer per thread,
# 5000 x 10 being several of the C core's chunks), on more threads than this
# machine may have cores.
@pytest.mark.parametrize("shape", [(300, 77), (5000, 10)])
def test_isa_and_threads_do_not_change_the_bits(shape, isa, rng):
    x = rng.standard_normal(shape).astype(np.float32) * 5
    t = rng.integers(0, shape[1], shape[0])
    opts = dict(softcap=6.0, logit_scale=0.9, lse_square_scale=1e-3)
    one = xentc.cross_entropy_with_grad(x, t, n_threads=1, reduction="none", **opts)
    for n_threads in (2, 5):
        many = xentc.cross_entropy_with_grad(x, t, n_threads=n_threads, reduction="none",
                                             **opts)
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)
    want = options_reference(x, t, reduction="none", **opts)
    tols = options_tolerance(x, t, np.float32, reduction="none", **opts)
    assert_within(one[0], want[0], tols[0], "loss")
    assert_within(one[1], want[3], tols[2], "grad")


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_logits(dtype_name, rng):
    tdtype = getattr(torch, dtype_name)
    x = torch.tensor(rng.standard_normal((32, 200)) * 4).to(tdtype)
    t = torch.tensor(rng.integers(0, 200, 32))
    opts = dict(softcap=8.0, lse_square_scale=1e-2, logit_scale=1.5)
    loss, z, grad = xentc.cross_entropy_with_grad(x, t, return_z_loss=True, **opts)
    assert loss.dtype == z.dtype == grad.dtype == tdtype
    want_loss, want_z, _, want_grad = options_reference(x.double().numpy(), t.numpy(), **opts)
    half_eps = float(torch.finfo(tdtype).eps)
    assert math.isclose(loss.item(), want_loss, rel_tol=2 * half_eps)
    assert math.isclose(z.item(), want_z, rel_tol=2 * half_eps)
    np.testing.assert_allclose(grad.double().numpy(), want_grad, rtol=half_eps,
                               atol=half_eps * np.abs(want_grad).max())


def test_autograd_and_the_module(rng):
    x = rng.standard_normal((4, 6, 30)) * 5
    t = rng.integers(0, 30, (4, 6))
    t[0, :3] = -100
    sw = rng.uniform(0.1, 3.0, (4, 6))
    opts = dict(softcap=12.0, logit_scale=0.8, lse_square_scale=3e-3)
    want = options_reference(x, t, axis=-1, sample_weight=sw, **opts)
    xt = torch.tensor(x, requires_grad=True)
    loss_fn = xentc.torch.CrossEntropyLoss(return_z_loss=True, return_lse=True, **opts)
    assert "softcap=12.0" in repr(loss_fn)
    # the module takes torch's (N, C, d) layout: classes on axis 1
    loss, z, lse = loss_fn(xt.transpose(1, 2), torch.tensor(t), sample_weight=torch.tensor(sw))
    assert loss.requires_grad and not z.requires_grad and not lse.requires_grad
    (2.5 * loss).backward()
    assert math.isclose(loss.item(), want[0], rel_tol=1e-12)
    assert math.isclose(z.item(), want[1], rel_tol=1e-12)
    np.testing.assert_allclose(lse.numpy(), want[2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(xt.grad.numpy(), 2.5 * want[3], rtol=1e-10, atol=1e-15)


def test_autograd_reduction_none_second_backward(rng):
    x = rng.standard_normal((5, 9))
    t = rng.integers(0, 9, 5)
    sw = rng.uniform(0.5, 2.0, 5)
    go = rng.uniform(-1.0, 1.0, 5)
    opts = dict(softcap=3.0, lse_square_scale=0.05)
    want = options_reference(x, t, reduction="none", sample_weight=sw, grad_output=go, **opts)
    xt = torch.tensor(x, requires_grad=True)
    loss = xentc.torch.cross_entropy(xt, torch.tensor(t), reduction="none",
                                     sample_weight=torch.tensor(sw), **opts)
    loss.backward(torch.tensor(go), retain_graph=True)
    np.testing.assert_allclose(xt.grad.numpy(), want[3], rtol=1e-12, atol=1e-15)
    xt.grad = None
    loss.backward(torch.tensor(go))  # the second pass runs the saved job again
    np.testing.assert_allclose(xt.grad.numpy(), want[3], rtol=1e-12, atol=1e-15)


def test_zero_sample_weight_is_an_empty_mean():
    x, t = np.zeros((3, 4)), np.array([0, 1, 2])
    sw = np.zeros(3)
    assert math.isnan(float(xentc.cross_entropy(x, t, sample_weight=sw)))
    loss, grad = xentc.cross_entropy_with_grad(x, t, sample_weight=sw, empty="zero")
    assert float(loss) == 0 and not grad.any()


@pytest.mark.parametrize("kw, error, match", [
    (dict(softcap=0.0), ValueError, "`softcap` must be a finite number > 0"),
    (dict(softcap=-30.0), ValueError, "`softcap`"),
    (dict(softcap=math.inf), ValueError, "`softcap`"),
    (dict(softcap=math.nan), ValueError, "`softcap`"),
    (dict(softcap="30"), TypeError, "`softcap`"),
    (dict(logit_scale=0.0), ValueError, "`logit_scale` must be a finite number > 0"),
    (dict(logit_scale=-1.0), ValueError, "`logit_scale`"),
    (dict(logit_scale=math.nan), ValueError, "`logit_scale`"),
    (dict(lse_square_scale=-1e-4), ValueError, "`lse_square_scale` must be a finite number >= 0"),
    (dict(lse_square_scale=math.inf), ValueError, "`lse_square_scale`"),
    (dict(sample_weight=np.ones(4)), ValueError, "`sample_weight` must have the loss's shape"),
    (dict(sample_weight=np.array([1.0, np.nan, 1.0])), ValueError, "`sample_weight` must be finite"),
    (dict(sample_weight=np.array([1.0, np.inf, 1.0])), ValueError, "`sample_weight` must be finite"),
    (dict(sample_weight=np.array([True, False, True])), TypeError, "`sample_weight` must be a real"),
])
def test_bad_options_are_named(kw, error, match):
    x, t = np.zeros((3, 4)), np.array([0, 1, 2])
    with pytest.raises(error, match=match):
        xentc.cross_entropy(x, t, **kw)
    with pytest.raises(error, match=match):
        xentc.cross_entropy_with_grad(x, t, **kw)


def test_no_gradient_for_sample_weight():
    xt = torch.zeros(3, 4, requires_grad=True)
    sw = torch.ones(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="`sample_weight`"):
        xentc.torch.cross_entropy(xt, torch.tensor([0, 1, 2]), sample_weight=sw)
