"""Build and run-time configuration, for bug reports, tests and ``python -m xentc info``."""
import functools
import importlib.metadata
import importlib.util

#: Array libraries xentc takes arrays from (through DLPack or the array API),
#: reported by `info` when installed.
ARRAY_LIBRARIES = ("numpy", "torch", "jax", "cupy", "dask", "array_api_strict", "pyopencl")


@functools.lru_cache(maxsize=1)
def _distributions():
    """Top-level module -> distributions providing it, read once from metadata."""
    return importlib.metadata.packages_distributions()


def module_version(module):
    """Installed version of a top-level module, found without importing it.

    Parameters
    ----------
    module : str
        Import name, e.g. ``"sklearn"``.

    Returns
    -------
    str or None
        The version of the distribution providing it, ``"unknown"`` for an
        importable module without metadata (e.g. run from a source tree),
        None when it cannot be imported.
    """
    if importlib.util.find_spec(module) is None:
        return None
    for dist in _distributions().get(module, [module]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def config():
    """The configuration as a dict (see `show_config`)."""
    from . import _core
    return {
        "version": module_version("xentc") or "unknown",
        "openmp": _core.openmp_enabled(),
        "compiled_isas": _core.compiled_isas(),
        "isa": _core.get_isa(),
        "threads": _core.default_threads(),
    }


def opencl_devices():
    """The OpenCL devices xentc's OpenCL engine finds.

    Returns
    -------
    list of str or str
        The devices' descriptions, or a one-line reason why none could be
        listed (pyopencl missing, no platform, an engine without the query):
        a report must not fail because a driver does.
    """
    if module_version("pyopencl") is None:
        return "pyopencl is not installed"
    try:
        from ._engines import opencl
        return [str(d) for d in opencl.devices()]
    except Exception as exc:  # any driver or loader error is the answer, not a crash
        return f"none found ({type(exc).__name__}: {exc})"


def info():
    """`config` plus the array libraries and OpenCL devices found.

    Returns
    -------
    dict
        `config`'s keys; ``array_libraries``: ``{name: version or None}``
        for `ARRAY_LIBRARIES`; ``opencl_devices``: see `opencl_devices`.
    """
    return {**config(),
            "array_libraries": {m: module_version(m) for m in ARRAY_LIBRARIES},
            "opencl_devices": opencl_devices()}


def format_config(cfg):
    """Lines ``key: value`` for a configuration dict.

    Parameters
    ----------
    cfg : dict
        As returned by `config` or `info`.

    Returns
    -------
    str
        One line per key; lists are joined with commas, dicts of versions
        listed as ``name version`` with missing ones last as ``name (not
        found)``, an empty list shown as ``none``.
    """
    lines = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            found = [f"{k} {v}" for k, v in value.items() if v is not None]
            value = ", ".join(found + [f"{k} (not found)" for k, v in value.items() if v is None])
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        lines.append(f"{key + ':':16} {value}")
    return "\n".join(lines)


def show_config():
    """Print and return xentc's build and run-time configuration.

    Returns
    -------
    dict
        ``version``; ``openmp`` (compiled with OpenMP); ``compiled_isas``
        (SIMD levels the row kernel was built for); ``isa`` (the one in use,
        lowered with the ``XENTC_ISA`` environment variable); ``threads``
        (threads a call uses by default); ``opencl_devices`` (the OpenCL
        platforms and devices found, or why none could be listed).
    """
    cfg = {**config(), "opencl_devices": opencl_devices()}
    print(format_config(cfg))
    return cfg
