"""Build and run-time configuration, for bug reports and for tests."""
from importlib.metadata import PackageNotFoundError, version as _version


def config():
    """The configuration as a dict (see `show_config`)."""
    from . import _core
    try:
        ver = _version("xentc")
    except PackageNotFoundError:  # running from a build tree
        ver = "unknown"
    return {
        "version": ver,
        "openmp": _core.openmp_enabled(),
        "compiled_isas": _core.compiled_isas(),
        "isa": _core.get_isa(),
        "threads": _core.default_threads(),
    }


def show_config():
    """Print and return xentc's build and run-time configuration.

    Returns
    -------
    dict
        ``version``; ``openmp`` (compiled with OpenMP); ``compiled_isas``
        (SIMD levels the row kernel was built for); ``isa`` (the one in use,
        lowered with the ``XENTC_ISA`` environment variable); ``threads``
        (threads a call uses by default).
    """
    cfg = config()
    for key, value in cfg.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key + ':':15} {value}")
    return cfg
