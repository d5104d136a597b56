"""Shapes and the benchmark run: every peer timed, interleaved, on each shape."""
import datetime
import os
import platform
import sys
import time

import numpy as np

from .._config import config, module_version
from .machine import available_cores, cpu_model, read_bandwidth
from .peers import Inputs, make_inputs, select_peers
from .timing import OtherLoad, median_ms, peak_extra_memory, time_interleaved


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

    Raises
    ------
    ValueError
        A malformed shape, or none at all.
    """
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            n, c = (int(part) for part in item.split("x"))
        except ValueError:
            raise ValueError(f"bad shape {item!r}, expected NxC such as 2048x32000") from None
        if n < 1 or c < 1:
            raise ValueError(f"bad shape {item!r}: N and C must be >= 1")
        shapes.append((n, c))
    if not shapes:
        raise ValueError("no shape given")
    return shapes


def constant_byte_shapes(classes, nbytes, itemsize):
    """Shapes with the given class counts and about the same number of bytes.

    Parameters
    ----------
    classes : sequence of int
        Class counts C.
    nbytes : int
        Target size of the logits in bytes.
    itemsize : int
        Bytes per logit.

    Returns
    -------
    list of tuple of int
        ``(N, C)`` with ``N = round(nbytes / (C * itemsize))``, at least 1.
    """
    return [(max(1, round(nbytes / (c * itemsize))), c) for c in classes]


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

class Progress:
    """A progress bar on a text stream, redrawn in place on a terminal.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file, default sys.stderr
        Where to draw. On a stream that is not a terminal the bar is not
        drawn; each new label is written on a line of its own instead.
    width : int, default 30
        Characters of the bar.
    """

    def __init__(self, total, stream=None, width=30):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self._drawn = "", 0.0

    def set_label(self, label):
        """Name the current stage (e.g. the shape being timed).

        Parameters
        ----------
        label : str
            Shown after the bar.
        """
        self.label = label
        if not self.tty:
            self.stream.write(f"[{self.done}/{self.total}] {label}\n")
            self.stream.flush()
        self._draw(force=True)

    def advance(self, steps=1):
        """Count `steps` more steps done.

        Parameters
        ----------
        steps : int, default 1
            Steps completed since the last call.
        """
        self.done = min(self.total, self.done + steps)
        self._draw()

    def _draw(self, force=False):
        now = time.monotonic()
        if not self.tty or (not force and now - self._drawn < 0.1):
            return  # a redraw per call would cost the short calls' timings
        self._drawn = now
        filled = round(self.width * self.done / self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{100 * self.done / self.total:3.0f}% {self.label}\x1b[K")
        self.stream.flush()

    def close(self):
        """Finish the bar (fills it and ends its line on a terminal)."""
        self.done = self.total
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _agree(got, want, dtype):
    """Whether a peer's outputs match xentc's, each within a tolerance of the dtype
    relative to its largest magnitude (the loss; the gradient as a whole)."""
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for a, b in zip(got, want):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.max(b)), -float(np.min(b))) if b.size else 0.0
        if b.size and not float(np.max(np.abs(np.subtract(a, b)))) <= rtol * scale:
            return False  # also when NaN
    return True


def bench_shape(shape, peers, *, dtype, repeat, threads, rng, progress=None):
    """Check and time every peer on one shape, in one interleaved run.

    Parameters
    ----------
    shape : tuple of int
        ``(N, C)``.
    peers : list of Peer
        As returned by `select_peers` (the read pass included).
    dtype : numpy dtype
        Floating dtype of the logits.
    repeat : int
        Timed repetitions.
    threads : int
        Cores for the peers that take a thread count.
    rng : numpy.random.Generator
        Source of randomness.
    progress : Progress, optional
        Advanced once per peer prepared and per sample.

    Returns
    -------
    dict
        ``shape``, ``bytes`` of the logits, per peer key ``median_ms``,
        ``min_ms``, ``gbps`` (logits bytes over the median) and ``agree``
        (its loss, and gradient, match xentc's), ``loss`` per peer,
        ``other_cores`` (see `OtherLoad`), ``extra_memory`` of xentc's
        in-place gradient call (see `peak_extra_memory`; when that peer
        ran) and ``samples`` (seconds per call).
    """
    tick = progress.advance if progress else None
    x, t = make_inputs(shape, dtype, rng)
    d = Inputs(x, t, threads)
    prepared, values, durations = {}, {}, []
    for peer in peers:
        run, check = peer.prepare(d)
        prepared[peer.key] = run
        start = time.perf_counter()
        out = run()  # the first call: page faults, lazy set-up; it also sizes the samples
        durations.append(time.perf_counter() - start)
        values[peer.key] = check(out)
        del out
        if tick:
            tick()
    agree, loss = {}, {}
    for peer in peers:
        ref = values.get(f"{peer.task}/xentc")
        if peer.task != "read":
            loss[peer.key] = values[peer.key][0]
            agree[peer.key] = ref is None or _agree(values[peer.key], ref, dtype)
    del values
    with OtherLoad() as other:
        samples = time_interleaved(list(prepared.items()), repeat=repeat, warmup=0,
                                   on_sample=tick, durations=durations)
    row = {
        "shape": list(shape),
        "bytes": x.nbytes,
        "median_ms": {k: median_ms(s["times"]) for k, s in samples.items()},
        "min_ms": {k: 1e3 * min(s["times"]) for k, s in samples.items()},
        "loss": loss,
        "agree": agree,
        "other_cores": other.cores,
        "extra_memory": None,
        "samples": samples,
    }
    row["gbps"] = {k: x.nbytes / ms / 1e6 for k, ms in row["median_ms"].items()}
    if "fwd+bwd/xentc" in prepared:
        row["extra_memory"] = peak_extra_memory(prepared["fwd+bwd/xentc"])
    return row


def _header(tasks, peers, missing, dtype, repeat, threads, bandwidth):
    """The run's description: machine, versions, settings and peers."""
    cfg = config()
    modules = sorted({r.partition(":")[0] for p in peers for r in p.requires} - {"xentc"})
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": available_cores(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {m: module_version(m) for m in modules},
        "xentc": cfg,
        "tasks": list(tasks),
        "peers": {p.key: p.call for p in peers},
        "missing": missing,
        "dtype": np.dtype(dtype).name,
        "threads": threads,
        "repeat": repeat,
        "read_bandwidth_gbps": bandwidth,
    }


def run(shapes, tasks, *, dtype="float32", repeat=5, threads=None, seed=0, peers=None,
        progress=True):
    """Time xentc and its peers on each shape; the whole benchmark.

    Parameters
    ----------
    shapes : sequence of tuple of int
        ``(N, C)`` logits shapes; one shape's arrays are freed before the
        next are made.
    tasks : sequence of str
        Keys of `TASKS` to time.
    dtype : {"float32", "float64"}, default "float32"
        Dtype of the logits.
    repeat : int, default 5
        Timed repetitions per shape; medians are reported.
    threads : int, optional
        Cores for xentc, torch and the read pass (default: all available);
        JAX uses its own thread pool on every core.
    seed : int, default 0
        Random seed of the inputs.
    peers : collection of str, optional
        Peer names to time besides xentc and the read pass (default: every
        installed one).
    progress : bool, default True
        Draw a progress bar on stderr.

    Returns
    -------
    dict
        ``header`` (machine, versions, settings, the measured memory-read
        bandwidth) and ``results`` (one `bench_shape` row per shape).
    """
    threads = available_cores() if threads is None else threads
    if repeat < 1 or threads < 1:
        raise ValueError(f"`repeat` and `threads` must be >= 1, got {repeat} and {threads}")
    selected, missing = select_peers(tasks, peers)
    dtype = np.dtype(dtype)
    bar = Progress(len(shapes) * len(selected) * (1 + repeat)) if progress else None
    if bar:
        bar.set_label("measuring the memory-read bandwidth")
    info = _header(tasks, selected, missing, dtype, repeat, threads, read_bandwidth(threads))
    rng = np.random.default_rng(seed)
    rows = []
    for shape in shapes:
        if bar:
            bar.set_label("shape " + "x".join(map(str, shape)))
        rows.append(bench_shape(shape, selected, dtype=dtype, repeat=repeat, threads=threads,
                                rng=rng, progress=bar))
    if bar:
        bar.close()
    return {"header": info, "results": rows}
