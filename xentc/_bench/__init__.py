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

Modules, one job each: ``timing`` (interleaved timing, peak memory),
``machine`` (cores, CPU model, memory bandwidth), ``peers`` (inputs and each
library's implementation of a task), ``runner`` (shapes and the run),
``report`` (tables and the plot). This package gives their public names.
"""
from .machine import available_cores, cpu_model, read_bandwidth
from .peers import PEERS, TASKS, Inputs, Peer, make_inputs, numpy_reference, select_peers
from .report import format_header, format_report, format_table, plot, speedup
from .runner import Progress, bench_shape, constant_byte_shapes, parse_shapes, run
from .timing import OtherLoad, calibrate_number, median_ms, peak_extra_memory, time_interleaved

__all__ = [
    "calibrate_number", "time_interleaved", "median_ms", "OtherLoad", "peak_extra_memory",
    "available_cores", "cpu_model", "read_bandwidth", "Inputs", "make_inputs",
    "numpy_reference", "Peer", "PEERS", "TASKS", "select_peers", "parse_shapes",
    "constant_byte_shapes", "Progress", "bench_shape", "run", "speedup", "format_table",
    "format_header", "format_report", "plot",
]
