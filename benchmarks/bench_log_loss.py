"""``xentc.log_loss`` against scikit-learn's ``log_loss``, in one interleaved run.

Run from anywhere once xentc and scikit-learn are installed::

    python benchmarks/bench_log_loss.py                  # (100000, 10), (8192, 1000), float64
    python benchmarks/bench_log_loss.py --quick          # smoke run, seconds
    python benchmarks/bench_log_loss.py --shapes 65536x10 --dtype float32 --repeat 25
    python benchmarks/bench_log_loss.py --threads 1      # the C core on one thread

For each shape (N, C) the script draws logits ``standard_normal * 3`` (as
``python -m xentc bench`` does), their softmax ``p`` (rows summing to one)
and class targets ``t`` in which every class occurs, checks that xentc and
scikit-learn agree, then times in one interleaved run (round-robin within
every repetition, after a warm-up) and reports medians over ``--repeat``
repetitions.

Implementations
---------------
sklearn
    ``sklearn.metrics.log_loss(t, p)``.
xentc
    ``xentc.log_loss(t, p)``: label handling, one pass over ``p`` by the
    engine, then O(N) work.
logits
    ``xentc.log_loss(t, x, from_logits=True)``: the same loss from the
    logits, through the engine's log-sum-exp.
pass
    The engine's pass alone, ``proba_rows(p, t)``: the O(N*C) part of the
    ``xentc`` call (extremes, row sums and the probability of each target).
read
    ``p.sum()``, one NumPy read of ``p`` on one core: the floor of a
    single-threaded pass.

Columns
-------
shape
    N x C of ``p``.
sklearn, xentc, logits, pass, read
    Median time per call in milliseconds.
vs sklearn, logits vs sklearn
    ``sklearn_ms / xentc_ms`` and ``sklearn_ms / logits_ms``: the speed-ups.
pass share
    ``pass_ms / xentc_ms``: the fraction of the call spent reading ``p``.
bar, ok
    The speed-up over scikit-learn aimed at (``BAR``) and whether this run
    meets it. Informational only: the script exits 0 either way.
other
    Cores that other processes kept busy, on average, while the row was
    timed (Linux only); rows above 0.1 are flagged.

Machines are noisy: compare ratios within one run rather than absolute times
across runs or machines.
"""
import argparse
import os
import sys
import warnings

import numpy as np
from sklearn.metrics import log_loss as sklearn_log_loss

import xentc
from xentc import _dispatch
from xentc._bench import Inputs, make_inputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import OtherLoad, median_ms, time_interleaved

#: Minimum speed-up of xentc.log_loss over scikit-learn's aimed at.
BAR = 10
DEFAULT_SHAPES = [(100000, 10), (8192, 1000)]
QUICK_SHAPES = [(4096, 10), (512, 100)]
DEFAULT_REPEAT = 15


def parse_shape(text):
    """Parse one shape.

    Parameters
    ----------
    text : str
        ``"NxC"``, e.g. ``"8192x1000"``.

    Returns
    -------
    tuple of int
        ``(N, C)``.
    """
    n, c = (int(v) for v in text.lower().split("x"))
    return n, c


def bench_shape(shape, dtype, repeat, threads, rng):
    """Check and time the implementations on one shape.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)`` with ``N >= C``.
    dtype : numpy dtype
        Floating dtype of the logits and probabilities.
    repeat : int
        Timed repetitions.
    threads : int or None
        ``n_threads`` of the xentc calls (None: all cores).
    rng : numpy.random.Generator
        Source of the inputs.

    Returns
    -------
    dict
        ``{"shape", "ms": {name: median}, "other"}``.
    """
    c = shape[1]
    x, t = make_inputs(shape, dtype, rng)
    t[:c] = np.arange(c)  # every class occurs: no labels= needed
    p = Inputs(x, t, threads=1).probs
    want = sklearn_log_loss(t, p)
    for name, got in (("xentc", xentc.log_loss(t, p, n_threads=threads)),
                      ("logits", xentc.log_loss(t, x, from_logits=True, n_threads=threads))):
        if not np.isclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-10):
            raise AssertionError(f"{name} gives {got!r}, scikit-learn {want!r} at {shape}")
    xp = _dispatch.namespace(p)
    engine = _dispatch.engine_for(xp, p, "auto")
    cases = [("sklearn", lambda: sklearn_log_loss(t, p)),
             ("xentc", lambda: xentc.log_loss(t, p, n_threads=threads)),
             ("logits", lambda: xentc.log_loss(t, x, from_logits=True, n_threads=threads)),
             ("pass", lambda: engine.proba_rows(xp, p, t, n_threads=threads)),
             ("read", lambda: p.sum())]
    with OtherLoad() as load:
        samples = time_interleaved(cases, repeat=repeat)
    return {"shape": shape, "ms": {k: median_ms(v["times"]) for k, v in samples.items()},
            "other": load.cores}


def format_row(r):
    """One line of the table.

    Parameters
    ----------
    r : dict
        A result of `bench_shape`.

    Returns
    -------
    str
        The row, aligned with the header that `main` prints.
    """
    ms = r["ms"]
    speedup = ms["sklearn"] / ms["xentc"]
    other = "?" if r["other"] is None else f"{r['other']:.2f}"
    return (f"{r['shape'][0]}x{r['shape'][1]:<{12 - len(str(r['shape'][0]))}}"
            + "".join(f"{ms[k]:10.2f}" for k in ("sklearn", "xentc", "logits", "pass", "read"))
            + f" {speedup:10.1f} {ms['sklearn'] / ms['logits']:17.1f}"
            + f" {ms['pass'] / ms['xentc']:10.2f} {BAR:4d} {'yes' if speedup >= BAR else 'no':>3}"
            + f" {other:>6}")


def main(argv=None):
    """Run the benchmark from the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status, 0 (the bar is informational).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=lambda s: [parse_shape(v) for v in s.split(",")],
                        help="comma-separated NxC (default: 100000x10,8192x1000)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--repeat", type=int, help=f"timed repetitions (default {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="n_threads of the xentc calls (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    repeat = args.repeat or (3 if args.quick else DEFAULT_REPEAT)
    rng = np.random.default_rng(args.seed)
    threads = "all cores" if args.threads is None else f"n_threads={args.threads}"
    print(f"xentc.log_loss vs sklearn.metrics.log_loss, {args.dtype}, {threads}, "
          f"median ms of {repeat}")
    print(f"{'shape':<13}" + "".join(f"{k:>10}" for k in ("sklearn", "xentc", "logits", "pass",
                                                          "read"))
          + "  vs sklearn  logits vs sklearn  pass share  bar  ok  other")
    flagged = False
    for shape in shapes:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # inputs are valid: any warning is a bug
            row = bench_shape(shape, np.dtype(args.dtype).type, repeat, args.threads, rng)
        print(format_row(row))
        flagged |= row["other"] is not None and row["other"] > 0.1
    if flagged:
        print("warning: other processes kept the machine busy (other > 0.1): rerun when quiet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
