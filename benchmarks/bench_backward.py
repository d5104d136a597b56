"""Forward and backward cross-entropy: xentc's fused, in-place call against torch and JAX.

Run from anywhere once xentc is installed::

    python benchmarks/bench_backward.py                     # default shapes
    python benchmarks/bench_backward.py --quick             # smoke run, seconds
    python benchmarks/bench_backward.py --shapes 2048x32000 --repeat 25 --json bwd.json

For each shape (N, C) the script draws logits ``standard_normal * 3`` and
uniform class targets, checks that every implementation agrees with xentc on
the loss and the gradient, then times them in one interleaved run and
reports medians over ``--repeat`` repetitions. The timing and the
implementations are those of ``python -m xentc bench`` (``xentc._bench``).

Implementations
---------------
xentc
    ``xentc.cross_entropy_with_grad(x, y, out=x, n_threads=T)``: the mean
    loss and its gradient in one pass, the gradient written over the logits
    (on a copy of its own, since every call overwrites it).
torch
    ``F.cross_entropy(xt, yt).backward()`` with ``xt`` a CPU leaf tensor
    that requires grad, sharing memory with the NumPy logits; ``xt.grad``
    is reset to None before each call, as ``zero_grad()`` leaves it, so
    each call allocates the gradient as a training step does.
jax
    ``jax.jit(jax.value_and_grad(loss))`` with ``loss`` optax's
    ``softmax_cross_entropy_with_integer_labels(x, t).mean()``, on the CPU
    (installed only optionally: ``pip install jax optax``). JAX runs on its
    own thread pool over every core whatever ``--threads`` says.
read
    ``torch.sum(xt)`` on T threads: one plain read pass over the logits.

Columns
-------
The columns of ``bench_forward.py``, plus ``vs jax`` and

mem %
    Peak memory xentc's in-place call allocated beyond its inputs, in
    percent of the logits' size, as ``tracemalloc`` sees it (NumPy reports
    its buffers to it) around one call on logits allocated beforehand. The
    summary line also gives the growth of the process's peak resident size
    during that call (Linux), which sees memory the C core allocates too.
    ``MEMORY_BAR`` is the aim, on the shapes that have a speed-up bar.

The speed-up bars are informational: the script exits 0 either way.
"""
import sys

from xentc._cli import run_script

#: Minimum speed-up of xentc's forward+backward against torch's, per (N, C) shape.
BARS = {
    (2048, 32000): 10,
    (1024, 50257): 10,
    (256, 128256): 10,
    (8192, 1000): 5,
}
#: Largest extra memory of the in-place call aimed at, as a fraction of the logits.
MEMORY_BAR = 0.05

DEFAULT_SHAPES = [(2048, 32000), (1024, 50257), (256, 128256), (8192, 1000), (65536, 10)]
QUICK_SHAPES = [(256, 1000), (64, 8192), (4096, 10)]
DEFAULT_REPEAT = 15


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
        argv, task="fwd+bwd", bars=BARS, default_shapes=DEFAULT_SHAPES,
        quick_shapes=QUICK_SHAPES, default_repeat=DEFAULT_REPEAT, memory_bar=MEMORY_BAR,
        description="Time xentc.cross_entropy_with_grad (in place) against torch and JAX.")


if __name__ == "__main__":
    sys.exit(main())
