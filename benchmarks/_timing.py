"""Interleaved timing helpers for the scripts in ``benchmarks/``.

The implementation lives in ``xentc._bench``, installed with xentc, so that
``python -m xentc bench`` and these scripts time things the same way; this
module keeps the short import the scripts use.
"""
from xentc._bench import (  # noqa: F401
    OtherLoad,
    calibrate_number,
    median_ms,
    peak_extra_memory,
    time_interleaved,
)

__all__ = ["calibrate_number", "time_interleaved", "median_ms", "OtherLoad", "peak_extra_memory"]
