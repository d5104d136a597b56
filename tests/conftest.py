"""Shared fixtures for the xentc test suite."""

from __future__ import annotations

import os
import sys
import zlib

import pytest

# Make the sibling helper module importable whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Hard requirements of the suite: a missing one must fail the run, never skip.
import numpy as np  # noqa: E402
import torch  # noqa: E402,F401

import xentc  # noqa: E402
import xentc._core  # noqa: E402  (private test hooks; not imported by the package)

BACKENDS = ("cpu", "generic")
DTYPES = (np.float32, np.float64)


def pytest_sessionstart(session):
    # Imported above already; repeated here so the requirement is explicit and
    # a broken install is reported before any collection work.
    import array_api_compat  # noqa: F401
    import array_api_strict  # noqa: F401
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import scipy.special  # noqa: F401
    import threadpoolctl  # noqa: F401
    import torch  # noqa: F401


def pytest_report_header(config):
    core = xentc._core
    return [
        f"xentc: compiled ISAs {core.compiled_isas()}, active {core.get_isa()}, "
        f"openmp {core.openmp_enabled()}",
        f"torch {torch.__version__}, numpy {np.__version__}",
    ]


def supported_isas():
    """Every compiled ISA that this CPU can run (probed, then restored)."""
    core = xentc._core
    found = []
    try:
        for name in core.compiled_isas():
            try:
                core.set_isa(name)
            except ValueError:
                continue
            found.append(name)
    finally:
        core.set_isa(None)
    return found


@pytest.fixture(scope="session")
def supported_isa_names():
    return supported_isas()


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so each test is reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=list(xentc._core.compiled_isas()))
def isa(request):
    """Force each compiled ISA in turn; skip those this CPU lacks; restore."""
    core = xentc._core
    try:
        core.set_isa(request.param)
    except ValueError:
        core.set_isa(None)
        pytest.skip(f"ISA {request.param!r} is not supported by this CPU")
    assert core.get_isa() == request.param
    try:
        yield request.param
    finally:
        core.set_isa(None)


@pytest.fixture(autouse=True)
def _restore_isa():
    """Whatever a test does, leave the best ISA active for the next one."""
    yield
    xentc._core.set_isa(None)
