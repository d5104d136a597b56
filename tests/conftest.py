"""Shared fixtures for the xentc test suite."""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import zlib
from types import ModuleType
from typing import Any, Callable

import pytest

# Make the sibling helper module importable whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Hard requirements of the suite: a missing one must fail the run, never skip.
import array_api_compat  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402,F401

import xentc  # noqa: E402
import xentc._core  # noqa: E402  (private test hooks; not imported by the package)

BACKENDS = ("cpu", "generic", "opencl")
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
        # The forced-ISA tests run what this CPU has; the others are named, not hidden.
        f"xentc: ISAs tested here {supported_isas()}, skipped (not on this CPU) "
        f"{[n for n in core.compiled_isas() if n not in supported_isas()]}",
        f"torch {torch.__version__}, numpy {np.__version__}",
        _opencl_header(),
    ]


def _opencl_header():
    """The OpenCL device that the tests' queues and the engine's default queue
    take, so that a log names the implementation that ran (PoCL, Intel, ...)."""
    try:
        import pyopencl as cl
    except ImportError:
        return "opencl: pyopencl is not installed"
    try:
        context = cl.create_some_context(interactive=False)
    except (cl.Error, RuntimeError) as exc:  # test_opencl fails or skips on it
        return f"opencl: no default device ({exc})"
    device = context.devices[0]
    return (f"opencl: {device.name!r} of {device.platform.name!r} "
            f"({device.platform.version}; PYOPENCL_CTX={os.environ.get('PYOPENCL_CTX', '')!r})")


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


# ---------------------------------------------------------------------------
# array libraries: the cross-library tests run over every installed one
# ---------------------------------------------------------------------------


class Library(enum.Enum):
    """The array libraries (and devices) that the cross-library tests cover.

    Each member is (test id, required, the engine ``backend="auto"`` must
    pick). Required ones are what CI installs: a missing one fails the run.
    Optional ones are skipped when absent, or when their device is.
    """

    NUMPY = "numpy", True, "cpu"
    ARRAY_API_STRICT = "array_api_strict", True, "cpu"
    # array_api_strict's "device1" stands for an accelerator: no engine may
    # read it through the host, so only the generic engine serves it.
    ARRAY_API_STRICT_DEVICE1 = "array_api_strict-device1", True, "generic"
    TORCH = "torch", True, "cpu"
    JAX = "jax", True, "cpu"
    CUPY = "cupy", False, "generic"
    TORCH_CUDA = "torch-cuda", False, "generic"

    def __new__(cls, value, required, auto_engine):
        member = object.__new__(cls)
        member._value_ = value
        member.required = required
        member.auto_engine = auto_engine
        return member

    def __str__(self):  # the test id
        return self.value

    @property
    def dtypes(self):
        """The floating dtypes its arrays can have here (JAX: float64 needs a
        process-wide switch, left alone so that no test depends on test order)."""
        return ("float32",) if self is Library.JAX else ("float32", "float64")

    def load(self) -> ArrayBackend:
        """This library's `ArrayBackend`; fails if required and missing, else skips."""
        try:
            return _LOADERS[self](self)
        except ImportError as exc:
            if self.required:
                pytest.fail(f"{self} is required by the test suite but cannot be imported: {exc}")
            pytest.skip(f"{self} is not installed ({exc})")


@dataclasses.dataclass(frozen=True)
class ArrayBackend:
    """How the tests make, inspect and read back one library's arrays."""

    library: Library
    xp: ModuleType  # the namespace that array_api_compat gives this library's arrays
    device: Any  # where `asarray` puts arrays, and where results must stay
    array_types: tuple  # what every result must be an instance of
    _to_numpy: Callable

    def __str__(self):
        return str(self.library)

    @property
    def writable(self):
        """Whether arrays can be written in place (so `out=` makes sense)."""
        return self.library is not Library.JAX

    def asarray(self, a):
        """A copy of NumPy array `a` (None passes) in this library, on its device."""
        if a is None:
            return None
        a = np.asarray(a)
        if a.dtype.kind == "f":
            self.dtype(a.dtype)  # skips the test early where the library lacks it
        # Made on the host, then moved: torch 2.11 refuses a 0-d NumPy array
        # straight to CUDA ("can't alias tensor from device 'cpu' to 'cuda:0'").
        return array_api_compat.to_device(self.xp.asarray(a, copy=True), self.device)

    def dtype(self, dtype):
        """This library's dtype named like NumPy's `dtype`; skips the test if it has none."""
        name = np.dtype(dtype).name
        if np.dtype(dtype).kind == "f" and name not in self.library.dtypes:
            pytest.skip(f"no {name} arrays in {self} here")
        return getattr(self.xp, name)

    def to_numpy(self, a):
        """A NumPy copy of this library's array `a`, for comparison with references."""
        return np.asarray(self._to_numpy(a))

    def check(self, got, dtype, shape, what="result"):
        """Type, namespace, device, dtype and shape of a result, then its NumPy copy."""
        from array_api_compat import array_namespace, device

        assert isinstance(got, self.array_types), \
            f"{what}: got {type(got)!r}, want an array of {self}"
        assert array_namespace(got) is self.xp, f"{what}: namespace {array_namespace(got)!r}"
        assert device(got) == self.device, f"{what}: device {device(got)!r} != {self.device!r}"
        assert got.dtype == self.dtype(dtype), f"{what}: dtype {got.dtype} != {self.dtype(dtype)}"
        assert tuple(got.shape) == tuple(shape), f"{what}: shape {tuple(got.shape)} != {shape}"
        return self.to_numpy(got)


def _load_numpy(lib):
    import array_api_compat.numpy as xp

    return ArrayBackend(lib, xp, "cpu", (np.ndarray, np.generic), np.asarray)


def _load_array_api_strict(lib):
    import array_api_strict as xp

    host = xp.Device("CPU_DEVICE")
    dev = host if lib is Library.ARRAY_API_STRICT else xp.Device("device1")
    return ArrayBackend(lib, xp, dev, (type(xp.asarray(0.0)),),
                        lambda a: np.from_dlpack(a.to_device(host)))


def _load_torch(lib):
    import array_api_compat.torch as xp
    import torch

    if lib is Library.TORCH:
        dev = torch.device("cpu")
    elif torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        pytest.skip("torch has no CUDA device here")
    return ArrayBackend(lib, xp, dev, (torch.Tensor,), lambda a: a.detach().cpu().numpy())


def _load_jax(lib):
    import jax
    import jax.numpy as xp

    return ArrayBackend(lib, xp, jax.devices("cpu")[0], (jax.Array,), np.asarray)


def _load_cupy(lib):
    import array_api_compat.cupy as xp
    import cupy

    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        n_devices = 0
    if not n_devices:
        pytest.skip("cupy has no CUDA device here")
    return ArrayBackend(lib, xp, cupy.cuda.Device(), (cupy.ndarray,), cupy.asnumpy)


_LOADERS = {
    Library.NUMPY: _load_numpy,
    Library.ARRAY_API_STRICT: _load_array_api_strict,
    Library.ARRAY_API_STRICT_DEVICE1: _load_array_api_strict,
    Library.TORCH: _load_torch,
    Library.TORCH_CUDA: _load_torch,
    Library.JAX: _load_jax,
    Library.CUPY: _load_cupy,
}


@pytest.fixture(params=list(Library), ids=str)
def library(request):
    """Each array library in turn, as an `ArrayBackend` (skipped if optional and absent).

    A test narrows the list with ``@pytest.mark.parametrize("library", [ids],
    indirect=True)``.
    """
    return Library(request.param).load()


@pytest.fixture(scope="session")
def library_enum():
    """The `Library` enum itself, for tests of the fixture's own policy."""
    return Library


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
    """Whatever a test does, leave the import-time ISA (XENTC_ISA's) active for the next one."""
    yield
    xentc._core.set_isa(None)
