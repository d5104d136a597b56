"""The rank side of tests/test_vocab_parallel.py.

A module of its own, imported by name from the tests folder (which conftest
puts on sys.path, and spawned children inherit): pytest's importlib mode
names test modules by their package path, which a spawned child could not
import to unpickle its function.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

import xentc.torch
from reference import options_reference

N, C = 40, 37
CASES = {
    "plain": {},
    "smoothing_weight": dict(label_smoothing=0.1, weight=True),
    "llm": dict(softcap=5.0, logit_scale=1.3, lse_square_scale=1e-2, sample_weight=True),
}


def problem(case):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C)) * 3
    x[3, 30] = 50.0  # a row's max in the last rank's shard
    t = rng.integers(0, C, N)
    t[::6] = -100
    kw = dict(CASES[case])
    if kw.pop("weight", False):
        kw["weight"] = rng.uniform(0.5, 2.0, C)
    if kw.pop("sample_weight", False):
        kw["sample_weight"] = rng.uniform(0.0, 2.0, N)
    return x, t, kw


def run_rank(rank, world, port, widths, case, reduction, errors):
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        x, t, kw = problem(case)
        start = sum(widths[:rank])
        go = np.linspace(0.5, 1.5, N) if reduction == "none" else 0.7
        want = options_reference(x, t, reduction=reduction, grad_output=go, **kw)
        shard = torch.tensor(x[:, start:start + widths[rank]], requires_grad=True)
        tkw = {k: torch.tensor(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
        loss = xentc.torch.vocab_parallel_cross_entropy(
            shard, torch.tensor(t), reduction=reduction, **{**kw, **tkw})
        loss.backward(torch.tensor(go, dtype=torch.float64))
        np.testing.assert_allclose(loss.detach().numpy(), want[0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(shard.grad.numpy(), want[3][:, start:start + widths[rank]],
                                   rtol=1e-12, atol=1e-14)
    except Exception as exc:  # reported by the parent
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
