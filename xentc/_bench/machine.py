"""What the benchmark reports about the machine: its cores, CPU and memory bandwidth."""
import functools
import os
import platform

import numpy as np

from .._config import module_version
from .timing import time_interleaved

#: Size of the array and number of passes of the memory-bandwidth measurement.
BANDWIDTH_BYTES = 1 << 28
BANDWIDTH_PASSES = 10


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


def read_pass(threads):
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
    read = read_pass(threads)
    samples = time_interleaved([("read", lambda: read(x))], repeat=repeat, warmup=1)
    return nbytes / min(samples["read"]["times"]) / 1e9
