"""Vocabulary-parallel cross-entropy on torch.distributed: 2 and 3 gloo processes
(and NCCL, one rank per GPU, where there are GPUs enough), uneven shards, against one process's float64 reference (torch autograd of the
option formula, ``reference.options_reference``); the ranks' side is in
``distributed_rank``."""

from __future__ import annotations

import socket

import pytest
import torch.multiprocessing as mp

from distributed_rank import run_rank


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each run spawns its ranks (seconds each): a sample of the combinations.
@pytest.mark.parametrize("widths, case, reduction", [
    ((20, 17), "plain", "mean"),
    ((20, 17), "smoothing_weight", "none"),
    ((5, 30, 2), "llm", "mean"),
    ((5, 30, 2), "llm", "none"),
    ((5, 30, 2), "smoothing_weight", "mean"),
    ((20, 17), "soft_module", "mean"),
    ((5, 30, 2), "soft_module", "none"),
    ((20, 17), "float32", "mean"),
    ((5, 30, 2), "float32", "none"),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_matches_one_process(widths, case, reduction, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks share two cores
    _spawn(widths, case, reduction, "gloo")


def _spawn(widths, case, reduction, backend):
    """Run distributed_rank.run_rank on len(widths) spawned ranks; fail with
    what the ranks reported."""
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(run_rank, args=(len(widths), _free_port(), widths, case, reduction, errors,
                                 backend),
                 nprocs=len(widths), join=True)
    except Exception:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail("; ".join(msgs) or "a rank failed")


@pytest.mark.parametrize("library", ["torch-cuda"])
@pytest.mark.parametrize("widths, case, reduction", [
    ((20, 17), "smoothing_weight", "mean"),
    ((20, 17), "llm", "none"),
    ((20, 17), "float32", "mean"),
    ((20, 17), "soft_module", "none"),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_nccl_across_gpus(library, widths, case, reduction):
    # Each rank on a GPU of its own, the collectives through NCCL: runs where
    # a machine has two GPUs or more (benchmarks/gpu_check.py selects it).
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available() or not dist.is_nccl_available():
        pytest.skip("needs CUDA devices and NCCL")
    if torch.cuda.device_count() < len(widths):
        pytest.skip(f"needs {len(widths)} GPUs, this machine has {torch.cuda.device_count()}")
    _spawn(widths, case, reduction, "nccl")


def test_bad_arguments_are_named():
    # One rank is enough to check the arguments before any communication.
    import torch
    import torch.distributed as dist

    import xentc.torch

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    try:
        x, t = torch.zeros(4, 6), torch.tensor([0, 1, 2, 9])
        with pytest.raises(IndexError, match="value 9 out of range for 6 classes"):
            xentc.torch.vocab_parallel_cross_entropy(x, t)
        t = torch.tensor([0, 1, 2, 3])
        for kw, match in ((dict(label_smoothing=1.5), "`label_smoothing`"),
                          (dict(sample_weight=torch.ones(3)), "`sample_weight`"),
                          (dict(weight=torch.ones(5)), "`weight`"),
                          (dict(softcap=0.0), "`softcap`"),
                          (dict(vocab_start=3), "`vocab_start`")):
            with pytest.raises(ValueError, match=match):
                xentc.torch.vocab_parallel_cross_entropy(x, t, **kw)
        with pytest.raises(ValueError, match="shaped as `logits_shard`"):
            xentc.torch.vocab_parallel_cross_entropy(x, torch.ones(4, 5) / 5)
        with pytest.raises(ValueError, match="`ignore_index` is not supported"):
            xentc.torch.vocab_parallel_cross_entropy(x, torch.ones(4, 6) / 6, ignore_index=0)
        loss_fn = xentc.torch.VocabParallelCrossEntropyLoss(label_smoothing=0.1)
        assert "label_smoothing=0.1" in repr(loss_fn)
        want = torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1)
        assert torch.allclose(loss_fn(x, t), want)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("library", ["torch-cuda"])
def test_nccl_on_one_gpu(library):
    # One rank: every collective of the call on CUDA tensors through NCCL (two
    # ranks would need two GPUs); the whole vocabulary is the shard.
    import torch
    import torch.distributed as dist

    import xentc.torch

    if not torch.cuda.is_available() or not dist.is_nccl_available():
        pytest.skip("needs a CUDA device and NCCL")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1)
    try:
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(64, 1000, device="cuda", dtype=torch.float64, generator=gen) * 3
        t = torch.randint(0, 1000, (64,), device="cuda", generator=gen)
        w = torch.rand(1000, device="cuda", dtype=torch.float64, generator=gen) + 0.5
        shard = x.clone().requires_grad_()
        loss = xentc.torch.vocab_parallel_cross_entropy(shard, t, weight=w, label_smoothing=0.1)
        loss.backward()
        ref = x.clone().requires_grad_()
        want = torch.nn.functional.cross_entropy(ref, t, weight=w, label_smoothing=0.1)
        want.backward()
        assert loss.device == x.device and torch.allclose(loss, want, rtol=1e-12)
        assert torch.allclose(shard.grad, ref.grad, rtol=1e-12, atol=1e-15)
    finally:
        dist.destroy_process_group()
