"""Forward cross-entropy: xentc against torch, NumPy and the memory-read limit.

Run from anywhere once xentc is installed::

    python benchmarks/bench_forward.py                      # default shapes
    python benchmarks/bench_forward.py --quick              # smoke run, seconds
    python benchmarks/bench_forward.py --shapes 2048x32000,8192x1000 \\
        --repeat 25 --dtype float64 --threads 4 --json result.json
    python benchmarks/bench_forward.py --peers torch,jax,numpy,scipy

For each shape (N, C) the script draws logits ``standard_normal * 3`` and
uniform class targets, checks that every implementation agrees with xentc on
the loss, then times them in one interleaved run (round-robin within every
repetition, after a warm-up) and reports medians over ``--repeat``
repetitions. Only one shape's arrays are alive at a time. The timing and the
implementations are those of ``python -m xentc bench`` (``xentc._bench``).

Implementations
---------------
xentc
    ``xentc.cross_entropy(x, y, n_threads=T)`` on the NumPy arrays
    (``reduction="mean"``).
torch
    ``torch.nn.functional.cross_entropy(xt, yt)`` on CPU tensors sharing
    memory with the NumPy arrays (``torch.from_numpy``), with
    ``torch.set_num_threads(T)``.
numpy
    A two-pass NumPy reference: row max, then ``log(sum(exp(x - max)))``
    and the gather of the target logits (single-threaded).
jax, scipy (with ``--peers``)
    ``jax.jit`` of optax's ``softmax_cross_entropy_with_integer_labels``
    on the CPU; ``scipy.special.logsumexp`` minus the target logits.
read
    ``torch.sum(xt)`` on T threads: one plain read pass over the logits,
    a practical lower bound for any implementation that must read them once.

Columns
-------
shape
    N x C of the logits.
xentc, torch, numpy, read
    Median time per call in milliseconds.
vs torch, vs numpy
    Speed-up of xentc: ``torch_ms / xentc_ms`` and ``numpy_ms / xentc_ms``
    (above 1 means xentc is faster).
x/read
    ``xentc_ms / read_ms``: how far xentc is from the memory-read limit
    (1.0 means it runs as fast as merely reading the logits).
xentc GB/s, read GB/s
    Bytes of logits (N * C * itemsize) divided by the median time, in 1e9
    bytes per second.
bar, ok
    The minimum speed-up against torch aimed at for that shape (``BARS``
    below; ``-`` for shapes without one) and whether this run meets it.
    Informational only: the script exits 0 either way.
other
    Cores that other processes kept busy, on average, while the row was
    timed (Linux only, ``?`` elsewhere). With every core in use, any other
    load stalls each parallel region for a scheduler time slice (often
    milliseconds), which swamps short calls: rows above 0.1 are flagged.

Machines are noisy: compare ratios within one run rather than absolute times
across runs or machines.
"""
import sys

from xentc._cli import run_script

#: Minimum speed-up of xentc against torch aimed at, per (N, C) shape.
BARS = {
    (2048, 32000): 5,
    (256, 128256): 5,
    (8192, 1000): 3,
    (1024, 50257): 3,
    (65536, 10): 2,
}

DEFAULT_SHAPES = [(2048, 32000), (256, 128256), (8192, 1000), (1024, 50257), (65536, 10)]
QUICK_SHAPES = [(256, 1000), (64, 8192), (4096, 10)]
DEFAULT_REPEAT = 15
#: The README's table: torch, xentc on torch tensors (the same memory: no copy) and NumPy.
DEFAULT_PEERS = ["torch", "xentc-torch", "numpy"]


def main(argv=None):
    """Run the benchmark from the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status, 0 (the bars are informational).
    """
    return run_script(
        argv, task="forward", bars=BARS, default_shapes=DEFAULT_SHAPES,
        quick_shapes=QUICK_SHAPES, default_repeat=DEFAULT_REPEAT, default_peers=DEFAULT_PEERS,
        description="Time xentc.cross_entropy against torch, NumPy and a read pass.")


if __name__ == "__main__":
    sys.exit(main())
