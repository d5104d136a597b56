"""Forward cross-entropy through the OpenCL engine next to the C core, in one interleaved run.

Run from anywhere once xentc and pyopencl (with a device: PoCL gives a CPU
one) are installed::

    python benchmarks/bench_opencl.py                     # 2048x32000, 8192x1000, 65536x10
    python benchmarks/bench_opencl.py --quick             # smoke run, seconds
    python benchmarks/bench_opencl.py --shapes 1024x50257 --dtype float64 --repeat 25

``PYOPENCL_CTX`` picks the device, as everywhere in pyopencl. For each shape
(N, C) the script draws logits ``standard_normal * 3`` and uniform class
targets (as ``python -m xentc bench`` does), copies them to the device once,
checks that the OpenCL engine agrees with the C core, then times in one
interleaved run (round-robin within every repetition, after a warm-up) and
reports medians over ``--repeat`` repetitions.

Implementations
---------------
c_core
    ``xentc.cross_entropy(x, t)`` on the NumPy arrays (all cores).
opencl
    ``xentc.cross_entropy(cx, ct)`` on ``pyopencl.array.Array`` copies of
    them, the mean read back to the host: the whole call, API layer and
    final reduction included.
kernel
    The engine's row pass alone, ``rows(xp, RowJob(cx, target=ct))`` until the queue
    is done: the O(N*C) part of the ``opencl`` call.
from_host
    ``xentc.cross_entropy(x, t, backend="opencl")``: NumPy arrays copied to
    the device and the per-row losses back, as that option does.

Columns
-------
shape
    N x C of the logits.
c_core, opencl, kernel, from_host
    Median time per call in milliseconds.
c_core GB/s, opencl GB/s, kernel GB/s
    Bytes of logits (N * C * itemsize) over the median time, 1e9 bytes/s.
opencl/c_core
    ``opencl_ms / c_core_ms`` (above 1: the OpenCL engine is slower). There
    is no bar: on a CPU the C core is the engine to use; the OpenCL numbers
    say what the portable path costs there.
other
    Cores that other processes kept busy, on average, while the row was
    timed (Linux only); rows above 0.1 are flagged.

Machines are noisy: compare ratios within one run rather than absolute times
across runs or machines.
"""
import argparse
import os
import sys

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

import xentc
from xentc._bench import make_inputs, parse_shapes
from xentc._engines import RowJob, opencl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import OtherLoad, median_ms, time_interleaved

DEFAULT_SHAPES = [(2048, 32000), (8192, 1000), (65536, 10)]
QUICK_SHAPES = [(256, 4000), (4096, 10)]
DEFAULT_REPEAT = 15
NAMES = ("c_core", "opencl", "kernel", "from_host")
#: Average cores kept busy by other processes above which a row is flagged.
NOISY_CORES = 0.1


def bench_shape(queue, shape, dtype, repeat, rng):
    """Check and time the implementations on one shape.

    Parameters
    ----------
    queue : pyopencl.CommandQueue
        Where the device arrays live.
    shape : tuple of int
        ``(N, C)``.
    dtype : numpy dtype
        Floating dtype of the logits.
    repeat : int
        Timed repetitions.
    rng : numpy.random.Generator
        Source of the inputs.

    Returns
    -------
    dict
        ``{"shape", "ms": {name: median}, "gbs": {name: GB/s}, "other"}``.
    """
    x, t = make_inputs(shape, dtype, rng)
    cx, ct = cla.to_device(queue, x), cla.to_device(queue, t)
    xp = opencl.namespace(cx, ct)
    want = float(xentc.cross_entropy(x, t))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, got in (("opencl", float(xentc.cross_entropy(cx, ct).get())),
                      ("from_host", float(np.mean(
                          xentc.cross_entropy(x, t, reduction="none", backend="opencl"))))):
        if not np.isclose(got, want, rtol=rtol, atol=0):
            raise AssertionError(f"{name} gives {got!r}, the C core {want!r} at {shape}")

    def kernel():
        opencl.rows(xp, RowJob(cx, target=ct))
        queue.finish()

    cases = [("c_core", lambda: xentc.cross_entropy(x, t)),
             ("opencl", lambda: xentc.cross_entropy(cx, ct).get()),
             ("kernel", kernel),
             ("from_host", lambda: xentc.cross_entropy(x, t, reduction="none",
                                                       backend="opencl"))]
    with OtherLoad() as load:
        samples = time_interleaved(cases, repeat=repeat)
    ms = {k: median_ms(v["times"]) for k, v in samples.items()}
    return {"shape": shape, "ms": ms, "gbs": {k: x.nbytes / v / 1e6 for k, v in ms.items()},
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
    ms, gbs = r["ms"], r["gbs"]
    other = "?" if r["other"] is None else f"{r['other']:.2f}"
    shape = f"{r['shape'][0]}x{r['shape'][1]}"
    return (f"{shape:<13}" + "".join(f"{ms[k]:10.2f}" for k in NAMES)
            + "".join(f"{gbs[k]:13.2f}" for k in ("c_core", "opencl", "kernel"))
            + f"{ms['opencl'] / ms['c_core']:15.2f} {other:>6}")


def main(argv=None):
    """Run the benchmark from the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status, 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shapes,
                        help="comma-separated NxC (default: 2048x32000,8192x1000,65536x10)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeat", type=int, help=f"timed repetitions (default {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repetitions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    repeat = args.repeat or (3 if args.quick else DEFAULT_REPEAT)
    context = cl.create_some_context(interactive=False)  # held while its queue is used
    queue = cl.CommandQueue(context)
    rng = np.random.default_rng(args.seed)
    print(f"xentc.cross_entropy: OpenCL engine on {queue.device.name!r} "
          f"({queue.device.platform.name}) vs the C core, {args.dtype}, median ms of {repeat}")
    print(f"{'shape':<13}" + "".join(f"{k:>10}" for k in NAMES)
          + "".join(f"{k + ' GB/s':>13}" for k in ("c_core", "opencl", "kernel"))
          + f"{'opencl/c_core':>15}  other")
    flagged = False
    for shape in shapes:
        row = bench_shape(queue, shape, np.dtype(args.dtype), repeat, rng)
        print(format_row(row), flush=True)
        flagged |= row["other"] is not None and row["other"] > NOISY_CORES
    if flagged:
        print(f"warning: other processes kept the machine busy (other > {NOISY_CORES}): "
              f"rerun when quiet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
