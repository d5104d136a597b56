"""linear_cross_entropy: the output layer's loss and its three gradients without the logits.

Checked against torch in float64: ``F.linear`` then the option formula
(``reference.options_reference``, torch's cross-entropy plus the row
options) differentiated by autograd, for several block budgets (whole rows,
a block of one row, the vocabulary split unevenly), every option, weights,
smoothing, soft targets and bias; from every array library; through torch's
autograd and the module; and against torch's own ``F.linear_cross_entropy``.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xentc
import xentc.torch
from reference import assert_within, eps_of, options_reference

N, H, C = 29, 12, 301


def problem(rng, dtype, soft=False, n=N, lead=None):
    x = rng.standard_normal((n, H)).astype(dtype)
    w = (rng.standard_normal((C, H)) * 0.4).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    if soft:
        t = rng.dirichlet(np.ones(C), n).astype(dtype)
    else:
        t = rng.integers(0, C, n)
        t[::5] = -100
    if lead is not None:
        x, t = x.reshape(lead + (H,)), t.reshape(lead + t.shape[1:])
    return x, w, b, t


def expected(x, w, b, t, grad_output=None, **kw):
    """(results..., d input, d weight, d bias) in float64: the logits by torch, the
    loss and its gradient with respect to them by the option formula."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    logits = x64 @ w64.T + (0.0 if b is None else np.asarray(b, np.float64))
    loss, z_loss, lse, g = options_reference(logits, t, axis=-1, grad_output=grad_output, **kw)
    g2 = g.reshape(-1, C)
    return (loss, z_loss, lse, (g2 @ w64).reshape(x64.shape),
            g2.T @ x64.reshape(-1, H), g2.sum(0))


def budgets(itemsize):
    """block_bytes: the default, blocks of several whole rows, one row, and the
    vocabulary split unevenly (3 blocks of 101, 101 and 99 classes for 1 row)."""
    return {"default": None, "rows": 7 * C * itemsize, "one_row": C * itemsize,
            "split": 101 * itemsize}


def check(got, want, dtype, what):
    scale = {"loss": 1.0, "z_loss": 1.0, "lse": 1.0}
    for name, g, w in zip(("loss", "z_loss", "lse", "d_input", "d_weight", "d_bias"), got, want):
        w = np.asarray(w)
        mag = np.max(np.abs(w)) if w.size else 0.0
        tol = 64 * eps_of(dtype) * (scale.get(name, 1.0) * np.abs(w) + mag + 1e-300)
        assert_within(np.asarray(g, np.float64), w, tol, f"{what}: {name}")


@pytest.mark.parametrize("budget", ["default", "rows", "one_row", "split"])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    {}, dict(label_smoothing=0.1, weight=True),
    dict(softcap=3.0, logit_scale=1.5, lse_square_scale=1e-2, sample_weight=True),
], ids=["plain", "smoothing_weight", "llm"])
def test_matches_torch_float64(budget, soft, reduction, options, dtype, rng):
    x, w, b, t = problem(rng, dtype, soft)
    kw = dict(options)
    if kw.pop("weight", False):
        kw["weight"] = rng.uniform(0.5, 2.0, C).astype(dtype)
    if kw.pop("sample_weight", False):
        kw["sample_weight"] = rng.uniform(0.0, 2.0, N).astype(dtype)
    go = rng.uniform(0.5, 1.5, N) if reduction == "none" else 0.7
    want = expected(x, w, b, t, reduction=reduction, grad_output=go, **kw)
    bb = budgets(np.dtype(dtype).itemsize)[budget]
    got = xentc.linear_cross_entropy_with_grad(
        x, w, t, linear_bias=b, reduction=reduction, return_z_loss=True, return_lse=True,
        grad_output=go if reduction != "none" else go.astype(dtype), block_bytes=bb, **kw)
    assert all(np.asarray(g).dtype == dtype for g in got)
    check(got, want, dtype, f"{budget} {reduction}")
    loss = xentc.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction,
                                      block_bytes=bb, **kw)
    np.testing.assert_array_equal(loss, got[0])


def test_language_model_shape_without_bias(rng):
    x, w, _, t = problem(rng, np.float64, n=24, lead=(4, 6))
    want = expected(x, w, None, t)
    got = xentc.linear_cross_entropy_with_grad(x, w, t, block_bytes=C * 8 * 5)
    assert got[3] is None and got[1].shape == x.shape
    check((got[0], got[1], got[2]), (want[0], want[3], want[4]), np.float64, "(B, T, H)")


def test_every_library(library, rng):
    x, w, b, t = problem(rng, np.float32)
    want = expected(x, w, b, t, label_smoothing=0.05)
    for bb in (None, 101 * 4):
        got = xentc.linear_cross_entropy_with_grad(
            library.asarray(x), library.asarray(w), library.asarray(t),
            linear_bias=library.asarray(b), label_smoothing=0.05, block_bytes=bb)
        got = [library.check(g, np.float32, np.shape(wv), name) for g, wv, name in
               zip(got, (want[0],) + want[3:], ("loss", "d_input", "d_weight", "d_bias"))]
        check(got, (want[0],) + want[3:], np.float32, f"{library} {bb}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("budget", ["default", "split"])
def test_autograd_and_module(reduction, budget, rng):
    x, w, b, t = problem(rng, np.float64, lead=(N, 1))
    bb = budgets(8)[budget]
    go = rng.uniform(-1.0, 1.0, (N, 1)) if reduction == "none" else 2.0
    want = expected(x, w, b, t, reduction=reduction, grad_output=go, softcap=5.0)
    head = xentc.torch.LinearCrossEntropyLoss(H, C, bias=True, dtype=torch.float64,
                                              reduction=reduction, softcap=5.0, block_bytes=bb)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(w))
        head.bias.copy_(torch.tensor(b))
    xt = torch.tensor(x, requires_grad=True)
    loss = head(xt, torch.tensor(t))
    loss.backward(torch.tensor(go) if reduction == "none" else torch.tensor(go))
    check((loss.detach(), xt.grad, head.weight.grad, head.bias.grad),
          (want[0],) + want[3:], np.float64, "module")


def test_only_the_gradients_asked_for(rng):
    x, w, b, t = problem(rng, np.float64)
    xt, wt = torch.tensor(x), torch.tensor(w, requires_grad=True)
    xentc.torch.linear_cross_entropy(xt, wt, torch.tensor(t)).backward()
    assert xt.grad is None and wt.grad is not None
    want = expected(x, w, None, t)
    check((wt.grad,), (want[4],), np.float64, "weight only")


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
def test_matches_torch_linear_cross_entropy(soft, rng):
    x, w, b, t = problem(rng, np.float64, soft)
    args = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    kw = dict(label_smoothing=0.1, weight=torch.tensor(rng.uniform(0.5, 2, C)))
    want = F.linear_cross_entropy(args[0], args[1], torch.tensor(t), linear_bias=args[2],
                                  **({} if soft else dict(ignore_index=-100)), **kw)
    want.backward()
    ours = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    got = xentc.torch.linear_cross_entropy(ours[0], ours[1], torch.tensor(t),
                                           linear_bias=ours[2], block_bytes=101 * 8, **kw)
    got.backward()
    assert math.isclose(got.item(), want.item(), rel_tol=1e-12)
    for a, r in zip(ours, args):
        np.testing.assert_allclose(a.grad, r.grad, rtol=1e-10, atol=1e-13)


def test_half_precision(rng):
    x, w, b, t = problem(rng, np.float32)
    want = expected(x.astype(np.float16), w.astype(np.float16), b.astype(np.float16), t)
    got = xentc.linear_cross_entropy_with_grad(
        *(torch.tensor(a).to(torch.bfloat16) for a in (x, w)), torch.tensor(t),
        linear_bias=torch.tensor(b).to(torch.bfloat16))
    assert all(g.dtype == torch.bfloat16 for g in got)
    eps = float(torch.finfo(torch.bfloat16).eps)
    assert math.isclose(got[0].item(), float(want[0]), rel_tol=8 * eps)
    for g, wv in zip(got[1:], want[3:]):
        np.testing.assert_allclose(g.double().numpy(), wv, rtol=0,
                                   atol=16 * eps * np.abs(wv).max())


def test_memory_stays_within_the_block_budget(rng):
    # Logits of 8192 x 32768 float32 would be 1 GiB (and their gradient as
    # much): the call holds one 8 MiB block of them at a time.
    n, h, c = 8192, 32, 32768
    x = rng.standard_normal((n, h), np.float32)
    w = rng.standard_normal((c, h), np.float32) * 0.1
    t = rng.integers(0, c, n)
    budget = 8 << 20
    tracemalloc.start()
    try:
        loss, dx, dw, _ = xentc.linear_cross_entropy_with_grad(x, w, t, block_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = dx.nbytes + dw.nbytes
    # the budget, its products' temporaries (each within it), and O(N + C)
    assert peak - outputs <= 3 * budget + 64 * (n + c), (peak - outputs) / 2**20
    assert np.isfinite(loss)


@pytest.mark.parametrize("kw, error, match", [
    (dict(linear_weight=np.zeros((C, H + 1))), ValueError, "`linear_weight` must have shape"),
    (dict(linear_weight=np.zeros((C, H), np.float32)), TypeError, "`linear_weight` must have"),
    (dict(linear_bias=np.zeros(C + 1)), ValueError, "`linear_bias` must have shape"),
    (dict(block_bytes=0), ValueError, "`block_bytes`"),
    (dict(block_bytes=1.5), ValueError, "`block_bytes`"),
    (dict(target=np.full(N, C)), IndexError, f"value {C} out of range"),
    (dict(softcap=-1.0), ValueError, "`softcap`"),
])
def test_bad_arguments_are_named(kw, error, match, rng):
    x, w, b, t = problem(rng, np.float64)
    args = dict(input=x, linear_weight=w, target=t, linear_bias=b)
    args.update(kw)
    with pytest.raises(error, match=match):
        xentc.linear_cross_entropy_with_grad(**args)
