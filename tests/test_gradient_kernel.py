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
from xentc._engines import cpu, generic

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
    _, _, got = ENGINES[engine].rows(xp, buf, weight=w, label_smoothing=smoothing,
                                     out_kind="grad", grad_scale=3.0, grad_row_scale=row_scale,
                                     out=buf if in_place else None, **kw)
    if in_place:
        assert got is buf or np.shares_memory(got, buf)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, 3.0 * row_scale[:, None] * want, rtol=0,
                               atol=64 * eps * np.abs(want).max() * 6)
    if not soft:
        assert np.all(got[t == -100] == 0)
