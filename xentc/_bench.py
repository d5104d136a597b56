"""Benchmark machinery: interleaved timing, the peer implementations, the report.

``python -m xentc bench`` and the scripts in ``benchmarks/`` (which are not
installed) share this one implementation of the timing, of every peer and of
the tables, so that their numbers are comparable.

Timing is interleaved: each repetition runs every implementation once,
round-robin, so that slow drifts of the machine (frequency scaling, other
processes, a noisy neighbour) land on all of them alike; ratios taken within
one run are much steadier than absolute times taken in separate runs.

A *task* is one computation (the forward loss, the loss and its gradient,
scikit-learn's ``log_loss``); a *peer* is one library's implementation of a
task. Every peer of every task, plus one plain read pass over the logits, is
timed in the same interleaved run for each shape, and each peer is compared
with xentc's implementation of its task.
"""
import dataclasses
import datetime
import functools
import gc
import importlib
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from ._config import config, module_version

__all__ = [
    "calibrate_number", "time_interleaved", "median_ms", "OtherLoad", "peak_extra_memory",
    "available_cores", "cpu_model", "read_bandwidth", "Inputs", "make_inputs",
    "numpy_reference", "Peer", "PEERS", "TASKS", "select_peers", "parse_shapes",
    "constant_byte_shapes", "Progress", "bench_shape", "run", "speedup", "format_table",
    "format_header", "format_report", "plot",
]

#: Samples shorter than this (seconds) are preceded by an untimed call of
#: their own case, longer ones by a `SPIN_WAIT` wait (see `time_interleaved`).
SETTLE_MAX = 0.1
#: Seconds of that wait: libgomp's default spin (GOMP_SPINCOUNT = 300000
#: iterations) kept an idle worker busy for about 10 ms after a parallel
#: region on the 2-core Zen 3 this was written on.
SPIN_WAIT = 0.02
#: Average cores kept busy by other processes above which a row is flagged.
NOISY_CORES = 0.1
#: Size of the array and number of passes of the memory-bandwidth measurement.
BANDWIDTH_BYTES = 1 << 28
BANDWIDTH_PASSES = 10


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def _calls_for(elapsed, min_time, max_number):
    """Calls of `elapsed` seconds each that fill `min_time`, in [1, `max_number`]."""
    if elapsed >= min_time:
        return 1
    return min(max_number, max(1, math.ceil(min_time / max(elapsed, 1e-9))))


def _busy_wait(seconds):
    """Keep this thread running for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def calibrate_number(func, min_time=1e-3, max_number=1000):
    """Number of back-to-back calls whose total takes at least `min_time`.

    Parameters
    ----------
    func : callable
        Called once, with no arguments.
    min_time : float, default 1e-3
        Seconds one timed sample should last at least, so that the clock's
        resolution and the loop's overhead stay negligible.
    max_number : int, default 1000
        Upper bound on the returned number.

    Returns
    -------
    int
        1 for calls that already take `min_time`, else enough calls to reach it.
    """
    start = time.perf_counter()
    func()
    return _calls_for(time.perf_counter() - start, min_time, max_number)


def time_interleaved(cases, repeat=15, warmup=2, min_time=1e-3, on_sample=None,
                     durations=None):
    """Time several callables round-robin and return the per-call samples.

    Parameters
    ----------
    cases : list of (str, callable)
        Names and zero-argument callables; names must be unique.
    repeat : int, default 15
        Number of timed repetitions. Each repetition times every case once
        (one sample of `number` calls each); the starting case rotates from
        one repetition to the next so that no case always runs first, right
        after another case has warmed the caches with the same data.
    warmup : int, default 2
        Untimed round-robin passes before the timed ones (first-touch page
        faults, lazy initialisation, thread-pool start-up); the last one's
        durations set `number` (see `calibrate_number`). Without
        `durations`, at least one is made.
    min_time : float, default 1e-3
        Each sample lasts at least this many seconds: fast callables are run
        several times per sample and the sample is divided by that number.
    on_sample : callable, optional
        Called with no argument after each warm-up call and each sample
        (a progress bar's hook).
    durations : sequence of float, optional
        Seconds per call of each case measured beforehand (say while
        checking its result), used like a warm-up pass's: then `warmup`
        may be 0, which spares a pass over slow callables.

    Returns
    -------
    dict
        ``{name: {"number": int, "times": list of float}}``, with ``times``
        the `repeat` per-call durations in seconds, in repetition order.

    Notes
    -----
    The garbage collector is disabled while timing, as `timeit` does, and
    restored afterwards. OpenMP runtimes (torch's and xentc's) keep their
    idle workers spinning for a while after a parallel region, and on a
    machine with few cores those spinning threads would bill the next case
    for the previous one's idle time. So each sample shorter than
    `SETTLE_MAX` starts with one untimed call of its own case; a longer one,
    where such a call would double the run time, starts after `SPIN_WAIT`
    seconds, long enough for the spinning threads to go to sleep. That wait
    is a busy one: a sleeping process lets the cores clock down, which
    slowed the next calls measurably on the machine this was written on.
    """
    names = [name for name, _ in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique, got {names}")
    if repeat < 1:
        raise ValueError(f"`repeat` must be >= 1, got {repeat}")
    tick = on_sample or (lambda: None)
    clock = time.perf_counter
    elapsed = [0.0] * len(cases) if durations is None else list(durations)
    for _ in range(warmup if durations is not None else max(warmup, 1)):
        for i, (_, func) in enumerate(cases):
            start = clock()
            func()
            elapsed[i] = clock() - start
            tick()
    numbers = [_calls_for(e, min_time, 1000) for e in elapsed]
    settle = [n * e < SETTLE_MAX for n, e in zip(numbers, elapsed)]
    times = [[] for _ in cases]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeat):
            for k in range(len(cases)):
                i = (rep + k) % len(cases)
                func, number = cases[i][1], numbers[i]
                if settle[i]:
                    func()
                else:
                    _busy_wait(SPIN_WAIT)
                start = clock()
                for _ in range(number):
                    func()
                times[i].append((clock() - start) / number)
                tick()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: {"number": number, "times": t}
            for name, number, t in zip(names, numbers, times)}


def median_ms(samples):
    """Median of per-call durations, in milliseconds.

    Parameters
    ----------
    samples : sequence of float
        Durations in seconds, e.g. one entry of `time_interleaved`'s result.

    Returns
    -------
    float
        The median in milliseconds.
    """
    return 1e3 * statistics.median(samples)


def _machine_busy_seconds():
    """CPU seconds all processes have spent busy since boot, or None.

    Read from the first line of ``/proc/stat`` (Linux); None elsewhere.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) + (int(fields[8]) if len(fields) > 8 else 0)
    return busy / ticks


class OtherLoad:
    """Measure how busy other processes kept the machine during a block.

    Use as a context manager; afterwards `cores` holds the average number
    of cores other processes kept busy (machine-wide busy CPU time minus
    this process's, divided by the wall time), or None where the platform
    does not expose machine-wide CPU times (only Linux does here).

    Notes
    -----
    When a benchmark uses every core, another process taking even part of
    one core delays each parallel region until the descheduled thread gets
    its next time slice, often several milliseconds: times of short calls
    can then be dominated by that wait. Rows measured with a non-negligible
    `cores` are best re-run on a quiet machine.

    Examples
    --------
    >>> with OtherLoad() as load:
    ...     pass
    >>> load.cores is None or load.cores >= 0
    True
    """

    def __init__(self):
        self.cores = None

    def __enter__(self):
        self._busy = _machine_busy_seconds()
        t = os.times()
        self._own = t.user + t.system
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy = _machine_busy_seconds()
        t = os.times()
        wall = time.perf_counter() - self._wall
        if busy is not None and self._busy is not None and wall > 0:
            other = (busy - self._busy) - (t.user + t.system - self._own)
            self.cores = max(0.0, other / wall)
        return False


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

def _proc_status_kib(field):
    """A ``VmXXX`` field of ``/proc/self/status`` in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak():
    """Reset the process's peak resident size to the current one; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM (Linux >= 4.0)
            f.write("5")
    except OSError:
        return False
    return True


def peak_extra_memory(func):
    """Peak memory one call allocates beyond what was allocated before it.

    Parameters
    ----------
    func : callable
        Called once with no argument; its inputs should already exist.

    Returns
    -------
    dict
        ``tracemalloc``: peak bytes traced by `tracemalloc` during the call
        (Python objects and NumPy buffers, which NumPy reports to it);
        ``rss``: growth of the process's peak resident size during the call
        in bytes, which also sees memory C code allocates directly (None
        where the platform cannot reset the peak; Linux can).
    """
    rss_before = _proc_status_kib("VmRSS") if _reset_rss_peak() else None
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        func()
        traced = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()
    rss_peak = _proc_status_kib("VmHWM")
    rss = None if rss_before is None or rss_peak is None else 1024 * max(0, rss_peak - rss_before)
    return {"tracemalloc": traced, "rss": rss}


# ---------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------

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


def _read_pass(threads):
    """A function that reads a whole array once: the sum of its elements.

    ``torch.sum`` on `threads` cores where torch is installed (vectorized,
    multi-threaded, little per-call overhead); else NumPy's sum, on one core.
    """
    if module_version("torch") is not None:
        import torch
        torch.set_num_threads(threads)
        return lambda x: torch.sum(torch.from_numpy(x))
    return np.sum


@functools.lru_cache(maxsize=None)
def read_bandwidth(threads, nbytes=BANDWIDTH_BYTES, repeat=BANDWIDTH_PASSES):
    """The machine's memory-read bandwidth, from read passes over a large array.

    Measured once per process and arguments (a property of the machine; it
    costs a quarter of a second, or seconds on a loaded machine).

    Parameters
    ----------
    threads : int
        Cores the read pass may use.
    nbytes : int, default `BANDWIDTH_BYTES`
        Size of the array read, far beyond any last-level cache.
    repeat : int, default `BANDWIDTH_PASSES`
        Timed passes; the fastest is used, as STREAM reports its best of
        several: other processes can only ever slow a pass down.

    Returns
    -------
    float
        Bytes read per second, in GB/s (1e9 bytes).
    """
    x = np.ones(nbytes // 4, np.float32)
    read = _read_pass(threads)
    samples = time_interleaved([("read", lambda: read(x))], repeat=repeat, warmup=1)
    return nbytes / min(samples["read"]["times"]) / 1e9


# ---------------------------------------------------------------------------
# inputs and peers
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Inputs:
    """The data of one shape, shared by every peer.

    Attributes
    ----------
    x : ndarray, shape (N, C)
        Logits, C-contiguous.
    t : ndarray of int64, shape (N,)
        Class targets.
    threads : int
        Cores a peer may use where it lets the caller choose.
    """
    x: np.ndarray
    t: np.ndarray
    threads: int

    @functools.cached_property
    def probs(self):
        """``softmax(x)`` in `x`'s dtype, made on first use (log_loss's input)."""
        p = np.exp(self.x - self.x.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p


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
    t : ndarray of int64, shape (N,)
        Uniform in ``[0, C)``.
    """
    n, c = shape
    x = rng.standard_normal((n, c), dtype=dtype)
    x *= 3
    t = rng.integers(0, c, size=n, dtype=np.int64)
    return x, t


def numpy_reference(x, t):
    """Mean cross-entropy in plain NumPy, two passes over the logits.

    Parameters
    ----------
    x : ndarray, shape (N, C)
        Logits.
    t : ndarray of int, shape (N,)
        Class targets.

    Returns
    -------
    float
        ``mean(logsumexp(x, axis=1) - x[arange(N), t])``.

    Notes
    -----
    ``exp`` writes into the ``x - max`` temporary rather than a second
    array, which keeps the peak memory at two copies of the logits.
    """
    m = x.max(axis=1, keepdims=True)
    shifted = np.subtract(x, m)
    np.exp(shifted, out=shifted)
    lse = m[:, 0] + np.log(shifted.sum(axis=1))
    return (lse - x[np.arange(x.shape[0]), t]).mean()


def _loss_only(run):
    return run, lambda loss: (float(loss),)


def _xentc_forward(d):
    import xentc
    return _loss_only(lambda: xentc.cross_entropy(d.x, d.t, n_threads=d.threads))


def _xentc_fwd_bwd(d):
    import xentc
    # The logits are overwritten by their gradient, so the calls get a copy of
    # their own: each call after the first reads the previous call's gradient,
    # which costs the kernel the same as fresh logits.
    scratch = d.x.copy()

    def check(out):
        loss, grad = out
        return float(loss), grad.copy()  # the next call overwrites it

    return (lambda: xentc.cross_entropy_with_grad(scratch, d.t, out=scratch,
                                                  n_threads=d.threads)), check


def _xentc_log_loss(d):
    import xentc
    labels = np.arange(d.x.shape[1])
    return _loss_only(lambda: xentc.log_loss(d.t, d.probs, labels=labels, n_threads=d.threads))


def _torch_tensors(d, requires_grad=False):
    import torch
    torch.set_num_threads(d.threads)
    return torch.from_numpy(d.x).requires_grad_(requires_grad), torch.from_numpy(d.t)


def _xentc_torch_forward(d):
    import xentc
    xt, tt = _torch_tensors(d)  # views of the same NumPy memory: the C core reads them in place
    return _loss_only(lambda: xentc.cross_entropy(xt, tt, n_threads=d.threads))


def _torch_forward(d):
    import torch
    xt, tt = _torch_tensors(d)
    return _loss_only(lambda: torch.nn.functional.cross_entropy(xt, tt))


def _torch_fwd_bwd(d):
    import torch
    xt, tt = _torch_tensors(d, requires_grad=True)

    def run():
        xt.grad = None  # a fresh gradient each step, as optimizers' zero_grad() leaves it
        loss = torch.nn.functional.cross_entropy(xt, tt)
        loss.backward()
        return loss

    return run, lambda loss: (loss.item(), xt.grad.numpy())


def _jax_compiled(fn, d):
    """`fn(x, t)` jitted for the CPU on `d`'s data, and its arguments there."""
    import jax
    if d.x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
    cpu = jax.devices("cpu")[0]
    args = jax.device_put(d.x, cpu), jax.device_put(d.t.astype(np.int32), cpu)
    # XLA's constant folding would evaluate the gradient's scatter of the
    # constant cotangent over all N rows at compile time (19 s for 1.7 M rows
    # on the 2-core machine this was written on, 1 s without); run times with
    # and without it agreed within 5%.
    compiled = jax.jit(fn).lower(*args).compile(
        compiler_options={"xla_disable_hlo_passes": "constant_folding"})
    return lambda: jax.block_until_ready(compiled(*args))


def _optax_loss(x, t):
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()


def _jax_forward(d):
    return _loss_only(_jax_compiled(_optax_loss, d))


def _jax_fwd_bwd(d):
    import jax
    run = _jax_compiled(jax.value_and_grad(_optax_loss), d)
    return run, lambda out: (float(out[0]), np.asarray(out[1]))


def _numpy_forward(d):
    return _loss_only(lambda: numpy_reference(d.x, d.t))


def _scipy_forward(d):
    from scipy.special import logsumexp
    rows = np.arange(d.x.shape[0])
    return _loss_only(lambda: (logsumexp(d.x, axis=1) - d.x[rows, d.t]).mean())


def _sklearn_log_loss(d):
    from sklearn.metrics import log_loss
    labels = np.arange(d.x.shape[1])
    return _loss_only(lambda: log_loss(d.t, d.probs, labels=labels))


def _read(d):
    read = _read_pass(d.threads)
    return (lambda: read(d.x)), lambda out: ()


@dataclasses.dataclass(frozen=True)
class Peer:
    """One implementation of one task.

    Attributes
    ----------
    task : str
        A key of `TASKS`.
    name : str
        Its column title; ``"xentc"`` is the one the others are compared with.
    call : str
        What is timed, for the report.
    requires : tuple of str
        Top-level modules it imports, optionally ``module:attribute`` for an
        attribute the module must have.
    prepare : callable
        ``prepare(inputs) -> (run, check)``: `run` is the timed zero-argument
        call; ``check(run())`` turns its output into its loss (and gradient)
        as Python floats / NumPy arrays, to check that the peers agree.
    """
    task: str
    name: str
    call: str
    requires: tuple[str, ...]
    prepare: Callable[[Inputs], tuple[Callable[[], object], Callable[[object], tuple]]]

    @property
    def key(self):
        """``task/name`` (``read`` for the read pass), unique among the peers."""
        return self.name if self.task == self.name else f"{self.task}/{self.name}"

    def missing(self):
        """The first requirement not met, or None when the peer can run.

        Returns
        -------
        str or None
            A module or ``module.attribute`` name.
        """
        for req in self.requires:
            module, _, attr = req.partition(":")
            if module_version(module) is None:
                return module
            if attr and not hasattr(importlib.import_module(module), attr):
                return f"{module}.{attr}"
        return None


#: Task name -> what it computes (mean reduction, class targets).
TASKS = {
    "forward": "cross-entropy loss",
    "fwd+bwd": "loss and gradient",
    "log_loss": "log_loss(t, softmax(x))",
    "read": "one read pass over the logits",
}

PEERS = (
    Peer("forward", "xentc", "xentc.cross_entropy(x, t)", ("xentc",), _xentc_forward),
    Peer("forward", "xentc-torch", "xentc.cross_entropy on torch CPU tensors (DLPack, no copy)",
         ("xentc", "torch"), _xentc_torch_forward),
    Peer("forward", "torch", "torch.nn.functional.cross_entropy(x, t)", ("torch",),
         _torch_forward),
    Peer("forward", "jax", "jax.jit(optax.softmax_cross_entropy_with_integer_labels(x, t)"
         ".mean())", ("jax", "optax"), _jax_forward),
    Peer("forward", "numpy", "max, exp, sum, log and gather: two passes, one core",
         ("numpy",), _numpy_forward),
    Peer("forward", "scipy", "scipy.special.logsumexp(x, axis=1) - x[rows, t], mean",
         ("scipy",), _scipy_forward),
    Peer("fwd+bwd", "xentc", "xentc.cross_entropy_with_grad(x, t, out=x) (in place)",
         ("xentc:cross_entropy_with_grad",), _xentc_fwd_bwd),
    Peer("fwd+bwd", "torch", "F.cross_entropy(x, t).backward(), x.requires_grad, "
         "x.grad = None", ("torch",), _torch_fwd_bwd),
    Peer("fwd+bwd", "jax", "jax.jit(jax.value_and_grad(optax.softmax_cross_entropy_with_"
         "integer_labels(x, t).mean()))",
         ("jax", "optax"), _jax_fwd_bwd),
    Peer("log_loss", "xentc", "xentc.log_loss(t, p, labels=range(C))", ("xentc:log_loss",),
         _xentc_log_loss),
    Peer("log_loss", "sklearn", "sklearn.metrics.log_loss(t, p, labels=range(C))",
         ("sklearn",), _sklearn_log_loss),
    Peer("read", "read", "torch.sum(x) on the threads (NumPy's sum without torch)",
         ("numpy",), _read),
)


def select_peers(tasks, names=None):
    """The peers of `tasks` to run, and those that cannot run.

    Parameters
    ----------
    tasks : sequence of str
        Keys of `TASKS`; the read pass is always added.
    names : collection of str, optional
        Peer names to keep besides xentc and the read pass (default: all).

    Returns
    -------
    run : list of Peer
        The peers that can run, in `PEERS` order. A task whose xentc peer
        cannot run has nothing to be compared with, so none of its peers do.
    missing : dict
        ``{peer key: missing requirement}`` for the wanted peers that cannot
        run (library not installed, or xentc built without the function).

    Raises
    ------
    ValueError
        An unknown task or peer name.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {list(TASKS)}")
    known = {p.name for p in PEERS}
    if names is not None and set(names) - known:
        raise ValueError(f"unknown peer(s) {sorted(set(names) - known)}; "
                         f"known: {sorted(known)}")
    wanted = [p for p in PEERS if p.task in set(tasks) | {"read"}
              and (names is None or p.name in names or p.name in ("xentc", "read"))]
    missing = {p.key: why for p in wanted if (why := p.missing()) is not None}
    runnable = {p.task for p in wanted if p.name in ("xentc", "read") and p.key not in missing}
    return [p for p in wanted if p.task in runnable and p.key not in missing], missing


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

def _timed(report, task):
    """Peer names of `task` that were timed, xentc first."""
    prefix = task + "/"
    return [k[len(prefix):] for k in report["header"]["peers"] if k.startswith(prefix)]


def speedup(row, task, peer):
    """xentc's speed-up against `peer` on one row: ``peer_ms / xentc_ms``.

    Parameters
    ----------
    row : dict
        One row of `run`'s results.
    task : str
        The task compared.
    peer : str
        The peer's name.

    Returns
    -------
    float
        Above 1 when xentc is faster.
    """
    ms = row["median_ms"]
    return ms[f"{task}/{peer}"] / ms[f"{task}/xentc"]


def _ms(key):
    return lambda r: f"{r['median_ms'][key]:.3f}"


def _columns(report, task, bars):
    """(title, width, formatter of a row) of `task`'s table."""
    names = _timed(report, task)
    cols = [("shape", 14, lambda r: "x".join(map(str, r["shape"])))]
    cols += [(n, max(9, len(n)), _ms(f"{task}/{n}")) for n in names]
    cols.append(("read", 9, _ms("read")))
    cols += [(f"vs {n}", max(8, len(n) + 3), lambda r, n=n: f"{speedup(r, task, n):.2f}x")
             for n in names if n != "xentc"]
    xentc = f"{task}/xentc"
    cols += [
        ("x/read", 7, lambda r: f"{r['median_ms'][xentc] / r['median_ms']['read']:.2f}"),
        ("xentc GB/s", 10, lambda r: f"{r['gbps'][xentc]:.3g}"),
        ("read GB/s", 9, lambda r: f"{r['gbps']['read']:.3g}"),
    ]
    if task == "fwd+bwd":
        cols.append(("mem %", 6, lambda r: "?" if r["extra_memory"] is None else
                     f"{100 * r['extra_memory']['tracemalloc'] / r['bytes']:.2f}"))
    if bars and "torch" in names:
        def verdict(r):
            bar = bars.get(tuple(r["shape"]))
            return "-" if bar is None else ("yes" if speedup(r, task, "torch") >= bar else "no")

        cols += [("bar", 4, lambda r: f"{bars[tuple(r['shape'])]}x"
                  if tuple(r["shape"]) in bars else "-"),
                 ("ok", 3, verdict)]
    cols.append(("other", 5, lambda r: "?" if r["other_cores"] is None
                 else f"{r['other_cores']:.2f}"))
    return cols


def format_table(report, task, bars=None):
    """One task's table: median ms per peer, speed-ups of xentc, bandwidths.

    Parameters
    ----------
    report : dict
        As returned by `run`, with `task`'s xentc peer timed.
    task : str
        A key of `TASKS`.
    bars : dict, optional
        ``{(N, C): minimum speed-up against torch}``; adds the ``bar`` and
        ``ok`` columns.

    Returns
    -------
    str
        The table's lines.
    """
    cols = _columns(report, task, bars)

    def line(cells):
        return "  ".join(cell.rjust(width) for cell, (_, width, _) in zip(cells, cols))

    lines = [line([title for title, _, _ in cols]), line(["-" * width for _, width, _ in cols])]
    lines += [line([fmt(r) for _, _, fmt in cols]) for r in report["results"]]
    return "\n".join(lines)


def format_header(report):
    """The run's description, as printed above the tables.

    Parameters
    ----------
    report : dict
        As returned by `run`.

    Returns
    -------
    str
        Lines describing the machine, the versions and the settings.
    """
    h, cfg = report["header"], report["header"]["xentc"]
    load = "?" if h["load_avg_1min"] is None else f"{h['load_avg_1min']:.2f}"
    versions = ", ".join(f"{m} {v}" for m, v in h["versions"].items())
    lines = [
        f"xentc benchmark, {h['date']}",
        f"  cpu        {h['cpu']} ({h['machine']}), {h['cores']} cores, "
        f"1-min load average at start {load}",
        f"  versions   python {h['python']}, {versions}, xentc {cfg['version']}",
        f"  xentc      openmp={cfg['openmp']}, compiled_isas={','.join(cfg['compiled_isas'])}, "
        f"isa={cfg['isa']}, default threads={cfg['threads']}",
        f"  run        {h['dtype']}, threads={h['threads']} (JAX: its own pool), "
        f"repeat={h['repeat']} (median), interleaved",
        f"  memory     read bandwidth {h['read_bandwidth_gbps']:.1f} GB/s "
        f"(fastest of {BANDWIDTH_PASSES} read passes over {BANDWIDTH_BYTES >> 20} MiB)",
    ]
    if h["missing"]:
        lines.append("  not run    " + ", ".join(f"{k} ({why} not available)"
                                                for k, why in h["missing"].items()))
    return "\n".join(lines)


def format_report(report, bars=None):
    """The whole report: header, one table per task, peers timed, warnings.

    Parameters
    ----------
    report : dict
        As returned by `run`.
    bars : dict, optional
        ``{task: {(N, C): minimum speed-up against torch}}``.

    Returns
    -------
    str
        Text for a terminal.
    """
    h, rows = report["header"], report["results"]
    out = [format_header(report), ""]
    for task in h["tasks"]:
        if "xentc" not in _timed(report, task):
            out += [f"{task}: not timed, xentc's implementation is missing", ""]
            continue
        out += [f"{task} ({TASKS[task]}, mean): ms per call (median); vs P = P's time / "
                "xentc's; x/read = xentc / read pass", format_table(report, task,
                                                                   (bars or {}).get(task)), ""]
    out.append("timed:")
    out += [f"  {k:16} {call}" for k, call in h["peers"].items()]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        out += [f"WARNING: {shape}: {k} disagrees with xentc (loss {r['loss'][k]!r})"
                for k, ok in r["agree"].items() if not ok]
    noisy = [r for r in rows if r["other_cores"] is not None and r["other_cores"] > NOISY_CORES]
    if noisy:
        out.append("WARNING: other processes kept cores busy while timing "
                   + ", ".join("x".join(map(str, r["shape"])) for r in noisy)
                   + ": those times are inflated; re-run on a quiet machine.")
    return "\n".join(out)


def plot(report, path):
    """Draw throughput against the number of classes, one panel per task.

    Parameters
    ----------
    report : dict
        As returned by `run`.
    path : str or path-like
        Image file to write (format from its extension, e.g. ``.png``).

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    h = report["header"]
    tasks = [t for t in h["tasks"] if "xentc" in _timed(report, t)]
    rows = sorted(report["results"], key=lambda r: r["shape"][1])
    classes = [r["shape"][1] for r in rows]
    names = list(dict.fromkeys(n for t in tasks for n in _timed(report, t)))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), sharey=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in _timed(report, task):
            ax.plot(classes, [r["gbps"][f"{task}/{name}"] for r in rows], marker="o",
                    color=colors[name], lw=2.5 if name == "xentc" else 1.5, label=name)
        ax.axhline(h["read_bandwidth_gbps"], color="k", ls="--", lw=1,
                   label=f"memory read ({h['read_bandwidth_gbps']:.0f} GB/s)"
                   if ax is axes[0][-1] else "_nolegend_")  # last in the shared legend
        ax.set(xscale="log", yscale="log", xlabel="classes C", title=f"{task}: {TASKS[task]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("GB of logits per second (higher is better)")
    # One legend for all panels, below them: inside, it would hide some points.
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               frameon=False)
    mib = sorted(r["bytes"] / 2**20 for r in rows)
    size = f"{mib[0]:.3g} MiB" if mib[-1] < 1.1 * mib[0] else f"{mib[0]:.3g} to {mib[-1]:.3g} MiB"
    fig.suptitle(f"xentc {h['xentc']['version']} on {h['cpu']}, {h['threads']} threads: "
                 f"{h['dtype']} logits of {size} per shape, median of {h['repeat']}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
