"""The engines' fused gradient (out_kind="grad"), against torch autograd.

Not public API yet: these tests pin the row maths that the autograd wrapper
will stand on, for both engines and both row paths (short C and long C).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import array_api_compat.numpy as xp
from reference import make_logits, make_soft_targets, make_targets, make_weight
from xentc._engines import RowJob, cpu, generic

ENGINES = {"cpu": cpu, "generic": generic}


def torch_grad(x, t, weight, smoothing, soft):
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = F.cross_entropy(xt, torch.from_numpy(t),
                           weight=None if weight is None else torch.from_numpy(weight),
                           reduction="sum", label_smoothing=smoothing)
    loss.backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("n_classes", [7, 300, 1500])
@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
def test_grad_matches_torch(engine, n_classes, soft, weighted, smoothing, in_place, dtype, rng):
    x = make_logits(rng, (6, n_classes), dtype)
    w = make_weight(rng, n_classes, dtype) if weighted else None
    if soft:
        t = make_soft_targets(rng, (6, n_classes), dtype)
        kw = dict(soft=t)
    else:
        t = make_targets(rng, (6,), n_classes, ignore_index=-100)
        kw = dict(target=t, ignore_index=-100)
    want = torch_grad(x, t, w, smoothing, soft)
    row_scale = np.linspace(0.5, 2.0, 6).astype(dtype)
    buf = x.copy()
    _, _, got = ENGINES[engine].rows(xp, RowJob(
        buf, weight=w, label_smoothing=smoothing, out_kind="grad", grad_scale=3.0,
        grad_row_scale=row_scale, out=buf if in_place else None, **kw))
    if in_place:
        assert got is buf or np.shares_memory(got, buf)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, 3.0 * row_scale[:, None] * want, rtol=0,
                               atol=64 * eps * np.abs(want).max() * 6)
    if not soft:
        assert np.all(got[t == -100] == 0)


def _rows_with_grad(x, t, soft, weight, smoothing, in_place):
    """cpu engine: (loss, lse, grad) of the summed loss, in place or not."""
    buf = x.copy()
    kw = dict(soft=t) if soft else dict(target=t, ignore_index=-100)
    loss, lse, grad = cpu.rows(xp, RowJob(buf, weight=weight, label_smoothing=smoothing,
                                          want_lse=True, out_kind="grad",
                                          out=buf if in_place else None, **kw))
    return loss, lse, grad


def torch_loss(x, t, weight, smoothing):
    return F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t),
                           weight=None if weight is None else torch.from_numpy(weight),
                           reduction="none", label_smoothing=smoothing).numpy()


@pytest.mark.parametrize("soft", [False, True], ids=["class", "soft"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
def test_grad_running_max_rising_block_after_block(soft, smoothing, in_place, dtype, rng):
    """Long rows whose max rises in every block (more blocks than the kernel
    keeps separate reference maxima for), falls, or sits in the last block."""
    n_classes = 45 * 4096 // np.dtype(dtype).itemsize  # 45 blocks of 4 KiB
    ramp = np.linspace(-30.0, 30.0, n_classes)
    x = np.stack([ramp, ramp[::-1], np.where(np.arange(n_classes) == n_classes - 1, 9.0, 0.0)])
    x = (x + rng.standard_normal(x.shape)).astype(dtype)
    w = make_weight(rng, n_classes, dtype)
    t = make_soft_targets(rng, x.shape, dtype) if soft else np.array([5, n_classes - 1, 0])
    loss, lse, grad = _rows_with_grad(x, t, soft, w, smoothing, in_place)
    eps = np.finfo(dtype).eps
    want = torch_grad(x, t, w, smoothing, soft)
    np.testing.assert_allclose(grad, want, rtol=0, atol=64 * eps * np.abs(want).max())
    want_loss = torch_loss(x.astype(np.float64), t.astype(np.float64) if soft else t,
                           w.astype(np.float64), smoothing)
    np.testing.assert_allclose(loss, want_loss, rtol=16 * eps)
    np.testing.assert_allclose(lse, torch.logsumexp(torch.from_numpy(x.astype(np.float64)), 1),
                               rtol=4 * eps, atol=4 * eps * 30)


@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
def test_grad_non_finite_long_rows(in_place, dtype, rng):
    """+inf met after earlier blocks were overwritten, NaN, a row of -inf and a
    leading run of -inf longer than a block: torch's gradient, loss and lse."""
    n_classes = 3 * 4096 // np.dtype(dtype).itemsize + 17
    x = make_logits(rng, (6, n_classes), dtype)
    x[0, n_classes - 5] = np.inf
    x[1, n_classes - 5] = np.inf
    x[1, 3] = np.nan
    x[2, 700] = np.nan
    x[3] = -np.inf
    x[4, : n_classes // 2] = -np.inf
    x[5, 0] = np.inf
    t = np.array([1, 2, 0, 4, n_classes - 1, 7])
    loss, lse, grad = _rows_with_grad(x, t, False, None, 0.0, in_place)
    want = torch_grad(x, t, None, 0.0, False)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(grad, want, rtol=0, atol=64 * eps, equal_nan=True)
    np.testing.assert_allclose(loss, torch_loss(x, t, None, 0.0), rtol=16 * eps, equal_nan=True)
    np.testing.assert_allclose(lse, torch.logsumexp(torch.from_numpy(x), 1), rtol=4 * eps,
                               equal_nan=True)
