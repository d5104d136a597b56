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
from reference import options_reference, options_tolerance

N, C = 40, 37
CASES = {
    "plain": {},
    "smoothing_weight": dict(label_smoothing=0.1, weight=True),
    "llm": dict(softcap=5.0, logit_scale=1.3, lse_square_scale=1e-2, sample_weight=True),
    # probabilities, each rank holding its columns of them; through the module
    "soft_module": dict(label_smoothing=0.05, weight=True, soft=True, softcap=8.0),
    # float32 shards, against the float64 reference within the option bounds
    "float32": dict(label_smoothing=0.1, lse_square_scale=1e-3, float32=True),
}


def problem(case):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C)) * 3
    x[3, 30] = 50.0  # a row's max in the last rank's shard
    t = rng.integers(0, C, N)
    t[::6] = -100
    kw = dict(CASES[case])
    if kw.pop("soft", False):
        t = rng.dirichlet(np.ones(C), N)
    if kw.pop("weight", False):
        kw["weight"] = rng.uniform(0.5, 2.0, C)
    if kw.pop("sample_weight", False):
        kw["sample_weight"] = rng.uniform(0.0, 2.0, N)
    return x, t, kw


def run_rank(rank, world, port, widths, case, reduction, errors, backend="gloo"):
    """One rank: its shard of the problem, loss and gradient against the
    float64 reference. backend "nccl" puts rank r's tensors on GPU r."""
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        x, t, kw = problem(case)
        dtype = np.float32 if kw.pop("float32", False) else np.float64
        x = x.astype(dtype).astype(np.float64)  # the reference sees the rounded logits
        cols = slice(sum(widths[:rank]), sum(widths[:rank + 1]))
        go = np.linspace(0.5, 1.5, N) if reduction == "none" else 0.7
        want = options_reference(x, t, reduction=reduction, grad_output=go, **kw)
        shard = torch.tensor(x[:, cols].astype(dtype), device=device, requires_grad=True)
        target = torch.tensor(t[:, cols] if t.ndim == 2 else t, device=device)
        tkw = {k: torch.tensor(v, device=device) for k, v in kw.items()
               if isinstance(v, np.ndarray)}
        if case == "soft_module":
            loss_fn = xentc.torch.VocabParallelCrossEntropyLoss(
                reduction=reduction, **{k: v for k, v in {**kw, **tkw}.items()
                                        if k != "sample_weight"})
            loss = loss_fn(shard, target)
        else:
            loss = xentc.torch.vocab_parallel_cross_entropy(
                shard, target, reduction=reduction, **{**kw, **tkw})
        loss.backward(torch.tensor(go, dtype=shard.dtype, device=device))
        if dtype == np.float64:
            tols = (1e-12 * np.abs(want[0]) + 1e-13, 1e-12 * np.abs(want[3][:, cols]) + 1e-14)
        else:  # the option bounds, and the sums' roundings of float32
            loss_tol, _, grad_tol = options_tolerance(x, t, dtype, reduction=reduction,
                                                      grad_output=go, **kw)
            tols = (loss_tol + 8 * np.finfo(dtype).eps * np.abs(want[0]), grad_tol[:, cols])
        assert loss.dtype == shard.dtype and loss.device == device
        assert np.all(np.abs(loss.detach().cpu().numpy() - want[0]) <= tols[0]), "loss"
        assert np.all(np.abs(shard.grad.cpu().numpy() - want[3][:, cols]) <= tols[1]), "gradient"
    except Exception as exc:  # reported by the parent
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
