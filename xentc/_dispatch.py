"""Choose the namespace of the caller's arrays and the engine for a (namespace, device).

The engine is resolved once per (namespace, device, backend) and cached.
Fallback order for ``backend="auto"``: the C core for CPU arrays it can read
without copying, then the OpenCL engine for ``pyopencl.array.Array``, then
the generic array-API engine, which serves anything.
"""
import functools
import importlib
import sys

import numpy as np
from array_api_compat import (array_namespace, is_array_api_obj, is_writeable_array,
                              to_device)
from array_api_compat import device as _device

BACKENDS = ("auto", "cpu", "opencl", "generic")
_AUTO_ORDER = ("cpu", "opencl", "generic")


def _engine(name):
    # Imported lazily so that a broken or absent compiled core (or pyopencl)
    # never stops the other engines from working.
    return importlib.import_module(f"xentc._engines.{name}")


def _is_opencl(a):
    # Checked without importing pyopencl: a caller who has such an array has
    # imported it already.
    cla = sys.modules.get("pyopencl.array")
    return cla is not None and isinstance(a, cla.Array)


def is_dask(a):
    """Whether `a` is a Dask array (without importing dask): ``xentc._dask`` takes
    those, chunk by chunk through the ordinary calls."""
    return type(a).__module__.split(".")[0] == "dask"


def namespace(*arrays, optional=None, **named):
    """The array namespace of the caller's arrays.

    Parameters
    ----------
    *arrays : array or None
        Arrays without a name (None entries ignored); errors count them.
    optional : dict, optional
        Arrays by argument name that the caller may leave None (``weight``).
    **named : array
        Arrays by argument name that must be there (``input=x``): errors name
        them, and a None, a list or a number among them is a TypeError.

    ``pyopencl.array.Array`` is not an array-API array; the OpenCL engine
    provides the small namespace that the API layer needs for it.

    Raises
    ------
    TypeError
        A required array missing or not an array, an unsupported array type,
        or arrays of different libraries (host and OpenCL arrays among them):
        the message names the arguments and says what to pass.
    """
    given = [(f"argument {k + 1}", a) for k, a in enumerate(arrays) if a is not None]
    given += [(f"`{name}`", a) for name, a in named.items()]
    given += [(f"`{name}`", a) for name, a in (optional or {}).items() if a is not None]
    # Arrays all of one type that was seen before skip array_namespace's
    # checks of every library: a small call spends as long there as in C.
    kind = type(given[0][1]) if given else None
    if kind in _NAMESPACES and all(type(a) is kind for _, a in given):
        return _NAMESPACES[kind]
    for name, a in named.items():
        if a is None or not (_is_opencl(a) or is_array_api_obj(a)):
            raise TypeError(f"`{name}` must be an array (NumPy, torch, JAX, CuPy, Dask, "
                            f"array-api-strict or pyopencl), got {_type_name(a)}")
    opencl = [name for name, a in given if _is_opencl(a)]
    if opencl:
        host = [(name, a) for name, a in given if not _is_opencl(a)]
        if host:
            name, a = host[0]
            raise TypeError(
                f"{name} is a {_type_name(a)} but {opencl[0]} is a pyopencl array: xentc "
                f"does not copy between host and device implicitly; pass "
                f"pyopencl.array.to_device(queue, {name.strip('`')}) instead")
        return _engine("opencl").namespace(*(a for _, a in given))
    try:
        xp = array_namespace(*(a for _, a in given))
    except TypeError as exc:
        better = _namespace_error(given)
        if better is None:
            raise
        raise better from exc
    if kind.__module__.split(".")[0] in _BY_TYPE and all(type(a) is kind for _, a in given):
        _NAMESPACES[kind] = xp
    return xp


def _type_name(a):
    kind = type(a)
    return "None" if a is None else (kind.__qualname__ if kind.__module__ == "builtins"
                                     else f"{kind.__module__}.{kind.__qualname__}")


def _namespace_error(given):
    """The TypeError for arrays that array_namespace refused, in xentc's words
    (None where there is nothing to add to its own)."""
    spaces = {}
    for name, a in given:
        try:
            xp = array_namespace(a)
        except TypeError:
            return TypeError(f"{name} must be an array (NumPy, torch, JAX, CuPy, Dask, "
                             f"array-api-strict or pyopencl), got {_type_name(a)}")
        spaces.setdefault(xp.__name__.removeprefix("array_api_compat."), []).append(name)
    if len(spaces) == 1:
        return None
    which = ", ".join(f"{' and '.join(names)} {'are' if len(names) > 1 else 'is a'} {lib} "
                      f"array{'s' if len(names) > 1 else ''}" for lib, names in spaces.items())
    (lib, _), *others = spaces.items()
    stray = [name for _, names in others for name in names]
    return TypeError(
        f"arrays of different libraries: {which}. xentc computes in its arrays' own "
        f"library and converts none: pass {' and '.join(stray)} as {lib} "
        f"array{'s' if len(stray) > 1 else ''} too, e.g. {lib}.asarray({stray[0].strip('`')})")


# Libraries whose arrays' namespace is a function of their type alone, and
# the namespaces found for such types so far.
_BY_TYPE = ("numpy", "torch", "jax", "jaxlib", "cupy")
_NAMESPACES = {}


def device_of(xp, array):
    """A hashable key for the device of `array` (OpenCL ones start with "opencl:")."""
    if type(array) is np.ndarray:
        return "cpu"
    torch = sys.modules.get("torch")
    if torch is not None and type(array) is torch.Tensor:  # as _device gives it, sooner
        return str(array.device)
    if _is_opencl(array):
        return _engine("opencl").device_key(array)
    return str(_device(array))


@functools.lru_cache(maxsize=256)
def _isdtype(xp, dtype, kind):
    return xp.isdtype(dtype, kind)


def isdtype(xp, dtype, kind):
    """``xp.isdtype``, cached: NumPy's costs microseconds a call."""
    try:
        return _isdtype(xp, dtype, kind)
    except TypeError:  # an unhashable dtype, or one NumPy's isdtype does not know
        if str(dtype) == "bfloat16":  # ml_dtypes' bfloat16 NumPy arrays
            return any(k in ("real floating", "numeric")
                       for k in ((kind,) if isinstance(kind, str) else kind))
        return xp.isdtype(dtype, kind)


@functools.lru_cache(maxsize=None)
def index_dtype(xp):
    """The namespace's default index dtype (JAX's is int32 unless x64 is enabled)."""
    return xp.__array_namespace_info__().default_dtypes()["indexing"]


def device(array):
    """The device object of `array`, as its namespace's creation functions take it."""
    return array.queue.device if _is_opencl(array) else _device(array)


def to_numpy(array):
    """The values of `array` as a NumPy array: NumPy arrays as they are, others
    copied from their device (pyopencl ones by their own ``get``, which is
    what they have instead of DLPack)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np.asarray(array)
    if _is_opencl(array):
        return array.get()
    if "cpu" not in str(_device(array)).lower():
        array = to_device(array, "cpu")
    return numpy_view(array)


def numpy_view(array):
    """A NumPy view of the CPU array `array`, sharing its memory (DLPack's)."""
    if array is None or isinstance(array, np.ndarray):
        return array
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        # torch refuses to export a tensor that tracks grad (reading it is
        # safe), and exports a negative or conjugate view's data without its
        # bit: the values would come out negated.
        array = array.detach().resolve_neg().resolve_conj()
        try:
            return array.numpy()  # the same view as DLPack's, in a tenth of its time
        except TypeError:  # a dtype NumPy lacks (bfloat16)
            pass
    return np.from_dlpack(array)


def writeable(array):
    """Whether `array` can be written into (JAX's and read-only NumPy's cannot)."""
    return _is_opencl(array) or is_writeable_array(array)


@functools.lru_cache(maxsize=None)
def _resolve(xp, device_key, backend):
    explicit = backend != "auto"
    for name in ((backend,) if explicit else _AUTO_ORDER):
        engine = _engine(name)
        if engine.accepts(xp, device_key, explicit):
            return engine
    raise ValueError(f"backend={backend!r} cannot serve arrays of {xp.__name__} "
                     f"on device {device_key!r}")


def engine_for(xp, array, backend):
    """The engine module that computes rows for `array` of namespace `xp`."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    return _resolve(xp, device_of(xp, array), backend)
