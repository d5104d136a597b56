"""Vocabulary-parallel cross-entropy on torch.distributed: 2 and 3 gloo processes,
uneven shards, against one process's float64 reference (torch autograd of the
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
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_matches_one_process(widths, case, reduction, monkeypatch):
    errors = mp.get_context("spawn").SimpleQueue()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks share two cores
    try:
        mp.spawn(run_rank, args=(len(widths), _free_port(), widths, case, reduction, errors),
                 nprocs=len(widths), join=True)
    except Exception:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail("; ".join(msgs) or "a rank failed")
