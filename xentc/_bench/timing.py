"""Interleaved timing and peak memory of the benchmark cases."""
import gc
import math
import os
import statistics
import time
import tracemalloc

#: Samples shorter than this (seconds) are preceded by an untimed call of
#: their own case, longer ones by a `SPIN_WAIT` wait (see `time_interleaved`).
SETTLE_MAX = 0.1
#: Seconds of that wait: libgomp's default spin (GOMP_SPINCOUNT = 300000
#: iterations) kept an idle worker busy for about 10 ms after a parallel
#: region on the 2-core Zen 3 this was written on.
SPIN_WAIT = 0.02
#: Average cores kept busy by other processes above which a row is flagged.
NOISY_CORES = 0.1


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
