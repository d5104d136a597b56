"""Forward cross-entropy: xentc against torch, NumPy and the memory-read limit.

Run from anywhere once xentc is installed::

    python benchmarks/bench_forward.py                      # default shapes
    python benchmarks/bench_forward.py --quick              # smoke run, seconds
    python benchmarks/bench_forward.py --shapes 2048x32000,8192x1000 \\
        --repeat 25 --dtype float64 --threads 4 --json result.json

For each shape (N, C) the script draws logits ``standard_normal * 3`` and
uniform class targets, checks that xentc and torch agree on the loss, then
times four implementations in one interleaved run (round-robin within every
repetition, after a warm-up) and reports medians over ``--repeat``
repetitions. Only one shape's arrays are alive at a time.

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
import argparse
import contextlib
import datetime
import gc
import io
import json
import os
import platform
import sys

import numpy as np
import torch

import xentc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import OtherLoad, median_ms, time_interleaved  # noqa: E402

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
QUICK_REPEAT = 3
NAMES = ("xentc", "torch", "numpy", "read")
#: Average cores kept busy by other processes above which a row is flagged.
NOISY_CORES = 0.1


def parse_shapes(text):
    """Parse a comma-separated list of ``NxC`` shapes.

    Parameters
    ----------
    text : str
        For example ``"2048x32000,8192x1000"``.

    Returns
    -------
    list of tuple of int
        The ``(N, C)`` pairs, in the given order.
    """
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            n, c = (int(part) for part in item.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}, expected NxC such as 2048x32000")
        if n < 1 or c < 1:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: N and C must be >= 1")
        shapes.append((n, c))
    if not shapes:
        raise argparse.ArgumentTypeError("no shape given")
    return shapes


def available_cores():
    """Number of CPU cores this process may run on.

    Returns
    -------
    int
        The size of the affinity mask where the platform has one, else
        ``os.cpu_count()``.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model():
    """A human-readable CPU name.

    Returns
    -------
    str
        The first ``model name`` of ``/proc/cpuinfo`` where there is one,
        else ``platform.processor()``, else ``"unknown"``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def xentc_config():
    """xentc's configuration, without the printout of ``xentc.show_config``.

    Returns
    -------
    dict
        The dict ``xentc.show_config()`` returns.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return xentc.show_config()


def header(args):
    """Describe the machine, the libraries and the run's settings.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (threads, dtype, repeat).

    Returns
    -------
    dict
        JSON-serialisable description, printed before the table.
    """
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cores": available_cores(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "xentc": xentc_config(),
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeat": args.repeat,
    }


def numpy_reference(x, y):
    """Mean cross-entropy in plain NumPy, two passes over the logits.

    Parameters
    ----------
    x : ndarray, shape (N, C)
        Logits.
    y : ndarray of int, shape (N,)
        Class targets.

    Returns
    -------
    float
        ``mean(logsumexp(x, axis=1) - x[arange(N), y])``.

    Notes
    -----
    ``exp`` writes into the ``x - max`` temporary rather than a second
    array, which keeps the peak memory at two copies of the logits.
    """
    m = x.max(axis=1, keepdims=True)
    shifted = np.subtract(x, m)
    np.exp(shifted, out=shifted)
    lse = m[:, 0] + np.log(shifted.sum(axis=1))
    return (lse - x[np.arange(x.shape[0]), y]).mean()


def make_inputs(shape, dtype, rng):
    """Random logits and targets for one shape.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)``.
    dtype : numpy dtype
        Floating dtype of the logits.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    x : ndarray, shape (N, C)
        ``standard_normal * 3``, C-contiguous.
    y : ndarray of int64, shape (N,)
        Uniform in ``[0, C)``.
    """
    n, c = shape
    x = rng.standard_normal((n, c), dtype=dtype)
    x *= 3
    y = rng.integers(0, c, size=n, dtype=np.int64)
    return x, y


def bench_shape(shape, dtype, repeat, threads, rng):
    """Check and time the four implementations on one shape.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)``.
    dtype : numpy dtype
        Floating dtype of the logits.
    repeat : int
        Timed repetitions.
    threads : int
        Threads for xentc and torch.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    dict
        Medians and minima (ms), ratios of the medians, bandwidths, the bar
        verdict, the losses and their agreement check, and the raw samples
        (seconds per call); see the module docstring for the columns.
    """
    x, y = make_inputs(shape, dtype, rng)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    f = torch.nn.functional.cross_entropy

    loss_xentc = float(xentc.cross_entropy(x, y, n_threads=threads))
    loss_torch = float(f(xt, yt))
    loss_numpy = float(numpy_reference(x, y))
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    agree = bool(np.isclose(loss_xentc, loss_torch, rtol=rtol, atol=0.0))

    cases = [
        ("xentc", lambda: xentc.cross_entropy(x, y, n_threads=threads)),
        ("torch", lambda: f(xt, yt)),
        ("numpy", lambda: numpy_reference(x, y)),
        ("read", lambda: torch.sum(xt)),
    ]
    with OtherLoad() as other:
        samples = time_interleaved(cases, repeat=repeat)
    ms = {name: median_ms(samples[name]["times"]) for name in NAMES}
    min_ms = {name: 1e3 * min(samples[name]["times"]) for name in NAMES}
    nbytes = x.nbytes
    bar = BARS.get(tuple(shape))
    vs_torch = ms["torch"] / ms["xentc"]
    row = {
        "shape": list(shape),
        "bytes": nbytes,
        "median_ms": ms,
        "min_ms": min_ms,
        "vs_torch": vs_torch,
        "vs_numpy": ms["numpy"] / ms["xentc"],
        "xentc_over_read": ms["xentc"] / ms["read"],
        "xentc_gbps": nbytes / ms["xentc"] / 1e6,
        "read_gbps": nbytes / ms["read"] / 1e6,
        "bar": bar,
        "meets_bar": None if bar is None else bool(vs_torch >= bar),
        "other_cores": other.cores,
        "loss": {"xentc": loss_xentc, "torch": loss_torch, "numpy": loss_numpy},
        "agree": agree,
        "samples": samples,
    }
    del cases, samples, xt, yt, x, y
    gc.collect()
    return row


COLUMNS = [
    # (title, width, formatter of a row)
    ("shape", 14, lambda r: "x".join(map(str, r["shape"]))),
    ("xentc", 9, lambda r: f"{r['median_ms']['xentc']:.3f}"),
    ("torch", 9, lambda r: f"{r['median_ms']['torch']:.3f}"),
    ("numpy", 9, lambda r: f"{r['median_ms']['numpy']:.3f}"),
    ("read", 9, lambda r: f"{r['median_ms']['read']:.3f}"),
    ("vs torch", 9, lambda r: f"{r['vs_torch']:.2f}x"),
    ("vs numpy", 9, lambda r: f"{r['vs_numpy']:.2f}x"),
    ("x/read", 7, lambda r: f"{r['xentc_over_read']:.2f}"),
    ("xentc GB/s", 11, lambda r: f"{r['xentc_gbps']:.1f}"),
    ("read GB/s", 10, lambda r: f"{r['read_gbps']:.1f}"),
    ("bar", 4, lambda r: "-" if r["bar"] is None else f"{r['bar']}x"),
    ("ok", 3, lambda r: "-" if r["meets_bar"] is None else ("yes" if r["meets_bar"] else "no")),
    ("other", 5, lambda r: "?" if r["other_cores"] is None else f"{r['other_cores']:.2f}"),
]


def format_row(cells):
    """Right-align cells to the widths of `COLUMNS`.

    Parameters
    ----------
    cells : sequence of str
        One string per column.

    Returns
    -------
    str
        The table line.
    """
    return "  ".join(cell.rjust(width) for cell, (_, width, _) in zip(cells, COLUMNS))


def print_header(info):
    """Print the run description.

    Parameters
    ----------
    info : dict
        As returned by `header`.
    """
    cfg = info["xentc"]
    print("xentc forward cross-entropy benchmark")
    print(f"  date       {info['date']}")
    print(f"  cpu        {info['cpu']} ({info['machine']}, processor={info['processor'] or '?'}), "
          f"{info['cores']} cores, 1-min load average at start "
          f"{'?' if info['load_avg_1min'] is None else format(info['load_avg_1min'], '.2f')}")
    print(f"  versions   python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, "
          f"xentc {cfg['version']}")
    print(f"  xentc      openmp={cfg['openmp']}, compiled_isas={','.join(cfg['compiled_isas'])}, "
          f"isa={cfg['isa']}, default threads={cfg['threads']}")
    print(f"  run        dtype={info['dtype']}, threads={info['threads']} "
          f"(torch {info['torch_threads']}), repeat={info['repeat']} (median), numpy single-threaded")
    print("  times in ms per call; vs torch/numpy = their time / xentc's; "
          "x/read = xentc / read pass")
    print()


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
    parser = argparse.ArgumentParser(
        description="Time xentc.cross_entropy against torch, NumPy and a read pass.")
    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help="comma-separated NxC list (default: the five reference shapes)")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed repetitions, median taken (default {DEFAULT_REPEAT}, "
                             f"{QUICK_REPEAT} with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for xentc and torch (default: all cores)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the header and all results to FILE")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and few repeats: a smoke run")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    if args.shapes is None:
        args.shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.threads is None:
        args.threads = available_cores()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)

    info = header(args)
    print_header(info)
    print(format_row([title for title, _, _ in COLUMNS]))
    print(format_row(["-" * width for _, width, _ in COLUMNS]))

    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in args.shapes:
        row = bench_shape(shape, dtype, args.repeat, args.threads, rng)
        rows.append(row)
        print(format_row([fmt(row) for _, _, fmt in COLUMNS]), flush=True)

    print()
    for row in rows:
        if not row["agree"]:
            loss = row["loss"]
            print(f"WARNING: shape {row['shape']}: xentc loss {loss['xentc']!r} differs from "
                  f"torch {loss['torch']!r}")
    noisy = [r for r in rows if r["other_cores"] is not None and r["other_cores"] > NOISY_CORES]
    if noisy:
        print("WARNING: other processes kept cores busy while timing "
              + ", ".join("x".join(map(str, r["shape"])) for r in noisy)
              + ": those times are inflated; re-run on a quiet machine.")
    met = [r["meets_bar"] for r in rows if r["meets_bar"] is not None]
    if met:
        print(f"speed-up bars met: {sum(met)}/{len(met)} (informational)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": info, "results": rows}, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
