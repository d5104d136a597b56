"""Interleaved timing of several implementations of the same computation.

Shared by the scripts in ``benchmarks/``. The helper runs every
implementation once per repetition, round-robin, so that slow drifts of the
machine (frequency scaling, other processes, a noisy neighbour) land on all of
them alike; ratios taken within one run are therefore much steadier than
absolute times taken in separate runs.
"""
import gc
import math
import os
import statistics
import time

__all__ = ["calibrate_number", "time_interleaved", "median_ms", "OtherLoad"]


def calibrate_number(func, min_time=1e-3, max_number=1000):
    """Number of back-to-back calls whose total takes at least `min_time`.

    Parameters
    ----------
    func : callable
        Called with no arguments.
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
    elapsed = time.perf_counter() - start
    if elapsed >= min_time:
        return 1
    return min(max_number, max(1, math.ceil(min_time / max(elapsed, 1e-9))))


def time_interleaved(cases, repeat=15, warmup=2, min_time=1e-3):
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
        faults, lazy initialisation, thread-pool start-up).
    min_time : float, default 1e-3
        Each sample lasts at least this many seconds: fast callables are run
        several times per sample (see `calibrate_number`) and the sample is
        divided by that number.

    Returns
    -------
    dict
        ``{name: {"number": int, "times": list of float}}``, with ``times``
        the `repeat` per-call durations in seconds, in repetition order.

    Notes
    -----
    The garbage collector is disabled while timing, as `timeit` does, and
    restored afterwards. Each turn starts with one untimed call: OpenMP
    runtimes (torch's and xentc's) keep their worker threads spinning for a
    while after a parallel region, and on a machine with few cores those
    spinning threads would otherwise bill the next case for the previous
    one's idle time.
    """
    names = [name for name, _ in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique, got {names}")
    if repeat < 1:
        raise ValueError(f"`repeat` must be >= 1, got {repeat}")
    for _ in range(warmup):
        for _, func in cases:
            func()
    numbers = [calibrate_number(func, min_time) for _, func in cases]
    times = [[] for _ in cases]
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeat):
            for k in range(len(cases)):
                i = (rep + k) % len(cases)
                func, number = cases[i][1], numbers[i]
                func()  # untimed: lets the previous case's idle threads park
                start = clock()
                for _ in range(number):
                    func()
                times[i].append((clock() - start) / number)
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
