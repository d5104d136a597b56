"""`normalizer` and `empty`: what the "mean" reduction divides by.

Checked against torch's float64 ``reduction="sum"`` divided by hand: micro-
batches of a gradient-accumulation step with ``normalizer=`` the full batch's
kept weight add up to one call on the full batch, loss and gradient, on every
engine and through torch's autograd.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xentc
import xentc.torch
from conftest import BACKENDS


def problem(rng, n=32, c=50, soft=False):
    x = rng.standard_normal((n, c)) * 3
    if soft:
        t = rng.dirichlet(np.ones(c), n)
    else:
        t = rng.integers(0, c, n)
        t[rng.random(n) < 0.3] = -100  # ignored tokens, unevenly spread
    return x, t, rng.uniform(0.5, 2.0, c)


def torch_sum(x, t, w, smoothing):
    """float64 torch: the summed loss and its gradient."""
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(t)
    loss = torch.nn.functional.cross_entropy(xt, tt, torch.tensor(w), reduction="sum",
                                             label_smoothing=smoothing)
    loss.backward()
    return loss.item(), xt.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_micro_batches_add_up_to_the_full_batch(backend, soft, dtype, rng):
    x, t, w = problem(rng, soft=soft)
    kept = float(np.sum(w[t[t >= 0]])) if not soft else float(len(x))
    want_loss, want_grad = torch_sum(x, t, w, 0.1)
    want_loss, want_grad = want_loss / kept, want_grad / kept
    total, grads = 0.0, []
    for xs, ts in zip(np.split(x.astype(dtype), 4), np.split(t, 4)):
        loss, grad = xentc.cross_entropy_with_grad(
            xs, ts.astype(dtype) if soft else ts, w.astype(dtype), label_smoothing=0.1,
            normalizer=kept, backend=backend)
        assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
        total += float(loss)
        grads.append(np.asarray(grad))
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    assert math.isclose(total, want_loss, rel_tol=rtol)
    np.testing.assert_allclose(np.concatenate(grads), want_grad, rtol=rtol,
                               atol=rtol * np.abs(want_grad).max())


def test_normalizer_through_autograd_and_the_module(rng):
    x, t, w = problem(rng)
    kept = float(np.sum(w[t[t >= 0]]))
    want_loss, want_grad = torch_sum(x, t, w, 0.0)
    loss_fn = xentc.torch.CrossEntropyLoss(weight=torch.tensor(w))
    xt = torch.tensor(x, requires_grad=True)
    total = sum(loss_fn(xs, ts, normalizer=kept)
                for xs, ts in zip(torch.split(xt, 8), torch.split(torch.tensor(t), 8)))
    total.backward()
    assert math.isclose(total.item(), want_loss / kept, rel_tol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), want_grad / kept, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_zero_gives_zero_and_a_zero_gradient(backend):
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32)
    t = np.array([-100, -100])
    loss = xentc.cross_entropy(x, t, backend=backend)
    assert math.isnan(float(loss))  # torch's answer stays the default
    for kw in ({"empty": "zero"}, {"empty": "zero", "weight": np.zeros(3, np.float32)}):
        t_kw = t if "weight" not in kw else np.array([0, 2])
        loss, grad = xentc.cross_entropy_with_grad(x, t_kw, backend=backend, **kw)
        assert float(loss) == 0.0 and np.asarray(loss).dtype == np.float32
        np.testing.assert_array_equal(grad, np.zeros_like(x))
    xt = torch.tensor(x, requires_grad=True)
    loss = xentc.torch.cross_entropy(xt, torch.tensor(t), empty="zero")
    loss.backward()
    assert loss.item() == 0.0 and not xt.grad.any()


@pytest.mark.parametrize("normalizer, error", [
    (0, ValueError), (-2.0, ValueError), (math.inf, ValueError), (math.nan, ValueError),
    ("many", TypeError), (np.array([1.0, 2.0]), TypeError),
])
def test_a_bad_normalizer_is_named(normalizer, error):
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(error, match="`normalizer`"):
        xentc.cross_entropy(x, t, normalizer=normalizer)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_normalizer_needs_the_mean(reduction):
    with pytest.raises(ValueError, match="`normalizer` divides the 'mean' reduction"):
        xentc.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction=reduction,
                            normalizer=2.0)


def test_a_bad_empty_is_named():
    with pytest.raises(ValueError, match="`empty` must be one of"):
        xentc.cross_entropy_with_grad(np.zeros((2, 3)), np.array([0, 1]), empty="none")
