"""log_loss over logits larger than memory: Dask on a local cluster against a NumPy loop.

Needs xentc with Dask's array and distributed packages::

    pip install "xentc[dask]"

Run from anywhere::

    python benchmarks/dask_log_loss.py                  # logits of 1.25 x this machine's memory
    python benchmarks/dask_log_loss.py --quick          # smoke run: 64 MiB, seconds
    python benchmarks/dask_log_loss.py --gib 2 --classes 1000 --chunk-rows 16384
    python benchmarks/dask_log_loss.py --workers 2 --threads-per-worker 1 --memory-limit 2GiB

The logits (float32, N x C) and their integer labels are never held whole.
Each chunk of rows is drawn where it is used, from a generator seeded with
``(seed, chunk index, stream)``: whichever process draws a chunk, in whatever
order, gets the same numbers, so the two runs below score the same data. The
logits are uniform on ``[-4, 4)``: NumPy draws float32 uniforms about four
times faster than normals, so that drawing hides less of the loss's own cost.

Runs
----
dask
    ``xentc.log_loss(y, x, from_logits=True, labels=range(C))`` of the lazy
    Dask arrays, on a ``distributed.LocalCluster`` of worker processes, each
    under ``--memory-limit``: every task draws one chunk and scores it on one
    thread (``n_threads=1``: Dask runs one task per worker thread, so more
    would oversubscribe the cores), and the per-chunk sums of losses and
    weights are added on the cluster. Dask's progress bar shows on stdout
    while it runs. The time is the call's, from building the graph to the
    returned float; starting the cluster and a small warm-up run (the
    workers' imports) come before it. The workers' peak resident memory is
    printed after it.
numpy
    The same chunks drawn one after another in this process, each scored by
    ``xentc.log_loss(..., normalize=False)`` on all cores; the loss is the
    exact sum of the chunks' sums (``math.fsum``) over the number of rows.
    The time is split into drawing and scoring.

The two losses must agree to 1e-6 (relative), or the script raises. It prints
each run's throughput, in GB/s (1e9 bytes of logits per second) and rows per
second, and the ratio of the two: with drawing dominating, the ratio mostly
shows how well the cluster spreads the work over the cores. ``other`` is the
number of cores that other programs kept busy, on average, during a run;
above 0.1 the script says to rerun on a quiet machine.
"""
import argparse
import functools
import importlib.metadata
import math
import sys
import tempfile
import time

import numpy as np

import xentc
from xentc._bench import available_cores, cpu_model

#: Logits are uniform on [-SPREAD, SPREAD).
SPREAD = 4.0
#: Default size of a chunk of logits (64 MiB), and that of --quick (8 MiB).
CHUNK_BYTES = 64 << 20
QUICK_CHUNK_BYTES = 8 << 20
#: Logits of --quick, in GiB (64 MiB).
QUICK_GIB = 1 / 16
#: The default size, as a multiple of the machine's memory.
DEFAULT_MEMORY_MULTIPLE = 1.25
#: A worker's own memory besides its task's chunk (about 100 MB measured), rounded up.
WORKER_BASE_BYTES = 128 << 20


def chunk_logits(seed, index, rows, classes):
    """The logits of one chunk of rows.

    Parameters
    ----------
    seed : int
        Seed of the whole run.
    index : int
        Index of the chunk among the row chunks.
    rows, classes : int
        Shape of the chunk.

    Returns
    -------
    numpy.ndarray
        float32 of shape ``(rows, classes)``, uniform on ``[-SPREAD, SPREAD)``.
    """
    # One stream per (seed, chunk, array): any process draws the same chunk.
    rng = np.random.default_rng([seed, index, 0])
    x = rng.random((rows, classes), dtype=np.float32)
    x *= 2 * SPREAD  # in place: no second chunk-sized array
    x -= SPREAD
    return x


def chunk_labels(seed, index, rows, classes):
    """The class labels of one chunk of rows.

    Parameters
    ----------
    seed, index, rows, classes : int
        As for `chunk_logits`.

    Returns
    -------
    numpy.ndarray
        int64 of shape ``(rows,)``, uniform over ``range(classes)``.
    """
    return np.random.default_rng([seed, index, 1]).integers(0, classes, rows)


def _logits_block(block_info=None, *, seed, classes):
    """`chunk_logits` of the output block Dask asks for."""
    out = block_info[None]
    return chunk_logits(seed, out["chunk-location"][0], out["chunk-shape"][0], classes)


def _labels_block(block_info=None, *, seed, classes):
    """`chunk_labels` of the output block Dask asks for."""
    out = block_info[None]
    return chunk_labels(seed, out["chunk-location"][0], out["chunk-shape"][0], classes)


def peak_rss():
    """Peak resident memory of the calling process, in bytes (None where unknown).

    Run on each worker after the computation: with the logits larger than
    the machine's memory, it shows that they never sat in memory.
    """
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return None
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                 else 1024)


def lazy_inputs(seed, row_chunks, classes):
    """Dask arrays of the logits and labels, drawn chunk by chunk when computed.

    Parameters
    ----------
    seed : int
        Seed of the run.
    row_chunks : tuple of int
        Rows of each chunk.
    classes : int
        Number of classes (one chunk along the classes).

    Returns
    -------
    x, y : dask.array.Array
        Logits ``(N, classes)`` float32 and labels ``(N,)`` int64, chunked by
        `row_chunks`.
    """
    import dask.array as da

    x = da.map_blocks(_logits_block, chunks=(row_chunks, (classes,)), dtype=np.float32,
                      meta=np.empty((0, 0), np.float32), token="logits", seed=seed,
                      classes=classes)
    y = da.map_blocks(_labels_block, chunks=(row_chunks,), dtype=np.int64,
                      meta=np.empty(0, np.int64), token="labels", seed=seed, classes=classes)
    return x, y


def _compute_with_progress(client, dsk, keys, **kwargs):
    """A Dask scheduler function: run the graph on `client` under a progress bar.

    `xentc.log_loss` computes its own graph and returns a float, so there is
    no future to watch from outside; set as Dask's scheduler, this submits the
    graph, draws ``distributed.progress`` over its futures, then gathers.
    """
    from distributed import progress

    futures = client.get(dsk, keys, sync=False, **kwargs)
    progress(futures)
    return client.gather(futures)


def dask_log_loss(client, seed, row_chunks, classes, show_progress):
    """The log loss of the drawn logits, computed on the cluster.

    Parameters
    ----------
    client : distributed.Client
        Client of the cluster.
    seed : int
        Seed of the run.
    row_chunks : tuple of int
        Rows of each chunk.
    classes : int
        Number of classes.
    show_progress : bool
        Draw Dask's progress bar on stdout.

    Returns
    -------
    float
        The mean loss.
    """
    import dask

    x, y = lazy_inputs(seed, row_chunks, classes)
    scheduler = (functools.partial(_compute_with_progress, client) if show_progress
                 else client.get)
    with dask.config.set(scheduler=scheduler):
        # labels= given: without it log_loss first computes every label to find them.
        return xentc.log_loss(y, x, from_logits=True, labels=np.arange(classes),
                              n_threads=1)


def numpy_log_loss(seed, row_chunks, classes):
    """The same log loss, chunk by chunk in this process.

    Parameters
    ----------
    seed : int
        Seed of the run.
    row_chunks : tuple of int
        Rows of each chunk.
    classes : int
        Number of classes.

    Returns
    -------
    loss : float
        The mean loss: the exact sum of the chunks' summed losses over the rows.
    draw_s, score_s : float
        Seconds spent drawing the chunks and scoring them.
    """
    labels = np.arange(classes)
    sums, draw_s, score_s = [], 0.0, 0.0
    for index, rows in enumerate(row_chunks):
        t0 = time.perf_counter()
        x = chunk_logits(seed, index, rows, classes)
        y = chunk_labels(seed, index, rows, classes)
        t1 = time.perf_counter()
        sums.append(xentc.log_loss(y, x, from_logits=True, labels=labels, normalize=False))
        score_s += time.perf_counter() - t1
        draw_s += t1 - t0
        del x  # before the next chunk is drawn: one chunk alive at a time
    return math.fsum(sums) / sum(row_chunks), draw_s, score_s


def split_rows(n_rows, chunk_rows):
    """Rows of each chunk: `chunk_rows` each, the last one the remainder.

    Parameters
    ----------
    n_rows, chunk_rows : int
        Rows in all and rows per chunk.

    Returns
    -------
    tuple of int
    """
    full, rest = divmod(n_rows, chunk_rows)
    return (chunk_rows,) * full + ((rest,) if rest else ())


class OtherLoad:
    """Cores that processes outside this one and its children kept busy in a block.

    Use as a context manager; afterwards `cores` holds the average over the
    block's wall time. The Dask workers are this process's children, so their
    work is not counted: a value well above 0 means another program shared
    the cores and the times are not the machine's.
    """

    def __init__(self):
        self.cores = None

    def _sample(self):
        import psutil

        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system + getattr(cpu, "irq", 0) + getattr(
            cpu, "softirq", 0)
        own = 0.0
        for proc in self._family:
            try:
                t = proc.cpu_times()
            except psutil.Error:  # a worker gone: its time is lost to `other`
                continue
            own += t.user + t.system
        return busy, own, time.perf_counter()

    def __enter__(self):
        import psutil

        me = psutil.Process()
        self._family = [me] + me.children(recursive=True)
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        (busy0, own0, t0), (busy1, own1, t1) = self._start, self._sample()
        self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))
        return False


def _count(n, noun):
    return f"{n} {noun}" + "s" * (n != 1)


def _result(name, loss, seconds, nbytes, rows, other, extra=""):
    return (f"{name:<7}loss {loss:.12f}  {seconds:8.2f} s  {nbytes / seconds / 1e9:7.3f} GB/s"
            f"  {rows / seconds:12,.0f} rows/s  other {other:.2f}{extra}")


def main(argv=None):
    """Run the example from the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 (a disagreement between the runs raises).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float,
                        help=f"GiB of logits (default: {DEFAULT_MEMORY_MULTIPLE} x this "
                             f"machine's memory; {QUICK_GIB * 1024:.0f} MiB with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small logits in small chunks, seconds")
    parser.add_argument("--classes", type=int, default=1000,
                        help="number of classes, the logits' columns (default 1000)")
    parser.add_argument("--chunk-rows", type=int,
                        help=f"rows per chunk (default: {CHUNK_BYTES >> 20} MiB of logits, "
                             f"{QUICK_CHUNK_BYTES >> 20} MiB with --quick)")
    parser.add_argument("--workers", type=int,
                        help="worker processes (default: cores / threads per worker)")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="tasks each worker runs at once (default 1)")
    parser.add_argument("--memory-limit", default="2GiB",
                        help="memory limit of each worker, in bytes (default 2GiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the logits and labels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        import dask
        import distributed
        import psutil  # a dependency of distributed
        from dask.utils import format_bytes, parse_bytes
    except ImportError as exc:
        parser.error(f'{exc}: this example needs pip install \"xentc[dask]\"')

    cores = available_cores()
    memory = psutil.virtual_memory().total
    workers = args.workers or max(1, cores // args.threads_per_worker)
    if args.gib is not None:
        nbytes = args.gib * 2**30
    else:
        nbytes = QUICK_GIB * 2**30 if args.quick else DEFAULT_MEMORY_MULTIPLE * memory
    row_bytes = args.classes * np.dtype(np.float32).itemsize
    chunk_rows = args.chunk_rows or max(
        1, (QUICK_CHUNK_BYTES if args.quick else CHUNK_BYTES) // row_bytes)
    n_rows = max(1, int(nbytes // row_bytes))
    row_chunks = split_rows(n_rows, chunk_rows)
    nbytes = n_rows * row_bytes
    try:
        limit = parse_bytes(args.memory_limit)
    except ValueError as exc:
        parser.error(f"--memory-limit: {exc}")
    # A worker holds one chunk per thread beside its own memory: with these over
    # half its limit, it would come near Dask's pause threshold (80%).
    chunk_bytes = chunk_rows * row_bytes
    need = 2 * (args.threads_per_worker * chunk_bytes + WORKER_BASE_BYTES)
    if need > limit:
        parser.error(f"chunks of {format_bytes(chunk_bytes)}, "
                     f"{_count(args.threads_per_worker, 'thread')} per worker, need a memory "
                     f"limit of at least {format_bytes(need)} per worker, not "
                     f"{args.memory_limit}: raise --memory-limit or lower --chunk-rows")

    print("xentc.log_loss(from_logits=True), Dask on a local cluster against a NumPy loop")
    print(f"machine   {cpu_model()}, {cores} cores available, {format_bytes(memory)} memory")
    print(f"versions  xentc {importlib.metadata.version('xentc')}, numpy {np.__version__}, "
          f"dask {dask.__version__}, distributed {distributed.__version__}")
    print(f"logits    {n_rows:,} x {args.classes} float32 = {format_bytes(nbytes)} "
          f"({nbytes / memory:.3g} x memory), {len(row_chunks)} chunks of {chunk_rows:,} rows "
          f"({format_bytes(chunk_bytes)}), seed {args.seed}")

    # The cluster's spill files go to a temporary folder, not the working directory.
    with tempfile.TemporaryDirectory() as scratch:
        t0 = time.perf_counter()
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=args.threads_per_worker,
                                      memory_limit=args.memory_limit, processes=True,
                                      dashboard_address=None, local_directory=scratch) as cluster, \
                distributed.Client(cluster) as client:
            print(f"cluster   {_count(workers, 'worker')} x "
                  f"{_count(args.threads_per_worker, 'thread')}, memory limit "
                  f"{format_bytes(limit)} each, started in {time.perf_counter() - t0:.1f} s")
            # A few tiny chunks per thread first, so that the timed run does not
            # pay the workers' imports and first unpickling of the functions.
            warm_up = split_rows(64 * 4 * workers * args.threads_per_worker, 64)
            dask_log_loss(client, args.seed, warm_up, args.classes, show_progress=False)
            with OtherLoad() as dask_load:
                t0 = time.perf_counter()
                dask_loss = dask_log_loss(client, args.seed, row_chunks, args.classes,
                                          show_progress=not args.no_progress)
                dask_s = time.perf_counter() - t0
            peaks = [v for v in client.run(peak_rss).values() if v is not None]

    with OtherLoad() as numpy_load:
        t0 = time.perf_counter()
        numpy_loss, draw_s, score_s = numpy_log_loss(args.seed, row_chunks, args.classes)
        numpy_s = time.perf_counter() - t0

    peaks = f", workers' peak memory {format_bytes(max(peaks))}" if peaks else ""
    print(_result("dask", dask_loss, dask_s, nbytes, n_rows, dask_load.cores, peaks))
    print(_result("numpy", numpy_loss, numpy_s, nbytes, n_rows, numpy_load.cores,
                  f"  (drawing {draw_s:.2f} s, log_loss {score_s:.2f} s = "
                  f"{nbytes / score_s / 1e9:.2f} GB/s)"))
    rel = abs(dask_loss - numpy_loss) / abs(numpy_loss)
    if not rel <= 1e-6:
        raise AssertionError(f"Dask gives {dask_loss!r}, the NumPy loop {numpy_loss!r} "
                             f"(relative difference {rel:.2e})")
    print(f"dask / numpy throughput: {numpy_s / dask_s:.2f}x; the losses agree to {rel:.1e} "
          f"(relative)")
    if max(dask_load.cores, numpy_load.cores) > 0.1:
        print("warning: other processes kept the machine busy (other > 0.1 cores): "
              "rerun when quiet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
