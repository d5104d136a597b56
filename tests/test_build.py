"""What the build compiled in: OpenMP and the SIMD levels, wherever wheels are shipped.

A build that silently lost OpenMP (a missing libomp on macOS, a meson.build that
forgot the dependency) still passes every numerical test, only serially; these
tests make it fail. They import nothing but xentc, pytest and threadpoolctl, so
they also run where the rest of the suite's dependencies (torch) have no wheels.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import pytest

import xentc._core

# On Windows platform.machine() names the OS's processor, which an emulated
# interpreter does not share; the interpreter's own platform tag is the truth.
_MACHINE = (sysconfig.get_platform() if sys.platform == "win32" else platform.machine()).lower()
X86_64 = sys.maxsize > 2**32 and _MACHINE in ("x86_64", "amd64", "win-amd64")

# Every compiler the wheels are built with accepts -mavx2/-mavx512f, so
# meson.build compiles both wide kernels on x86_64; elsewhere only the portable
# kernel (SSE2/NEON-width vectors) exists.
EXPECTED_ISAS = ["baseline", "avx2", "avx512"] if X86_64 else ["baseline"]

# The platforms wheels are built for, each with an OpenMP runtime
# (libgomp, Homebrew's libomp, MinGW's libgomp).
OPENMP_PLATFORMS = ("linux", "darwin", "win32")
needs_openmp = pytest.mark.skipif(
    sys.platform not in OPENMP_PLATFORMS, reason=f"no OpenMP build is expected on {sys.platform}"
)


def _probe(code, **env):
    """Run ``code`` in a fresh interpreter that imports xentc and nothing heavy."""
    # PYTHON_GIL=1 from the caller would force the GIL on a free-threaded build.
    base = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),  # `-c` puts the cwd first on sys.path: not the source tree
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_isas():
    assert list(xentc._core.compiled_isas()) == EXPECTED_ISAS, _MACHINE


@needs_openmp
def test_openmp_compiled_in():
    assert xentc._core.openmp_enabled(), (
        "built without OpenMP: install an OpenMP runtime (libomp on macOS) and rebuild, "
        "or configure with -Dopenmp=enabled to make its absence a build error"
    )


@needs_openmp
def test_openmp_runtime_is_live():
    # A fresh process, so no other library (torch bundles an OpenMP runtime too)
    # can be the one threadpoolctl finds. The thread count must come from the
    # OpenMP runtime honouring OMP_NUM_THREADS, not from a serial fallback.
    info = _probe(
        """
        import json
        import numpy as np
        import threadpoolctl
        import xentc, xentc._core
        xentc.cross_entropy(np.zeros((64, 8), np.float32), np.zeros(64, np.int64), n_threads=2)
        apis = [i["user_api"] for i in threadpoolctl.threadpool_info()]
        print(json.dumps({"threads": xentc._core.default_threads(), "apis": apis}))
        """,
        OMP_NUM_THREADS="3",
    )
    assert info["threads"] == 3, info
    assert "openmp" in info["apis"], info


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="not a free-threaded Python")
def test_free_threaded_import_keeps_gil_disabled():
    # An extension module that does not declare itself free-threading safe
    # turns the GIL back on at import, with only a warning.
    info = _probe(
        """
        import json, sys
        import xentc, xentc._core
        print(json.dumps({"gil": sys._is_gil_enabled()}))
        """
    )
    assert info["gil"] is False, "importing xentc re-enabled the GIL"
