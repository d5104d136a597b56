"""Choose the engine for a (namespace, device): resolved once per pair and cached.

Fallback order for ``backend="auto"``: the C core for CPU arrays it can read
without copying, then the generic array-API engine, which serves anything.
"""
import functools

from array_api_compat import device as _device

BACKENDS = ("auto", "cpu", "generic")
_AUTO_ORDER = ("cpu", "generic")


def _engine(name):
    # Imported lazily so that a broken or absent compiled core never stops the
    # generic engine from working.
    if name == "cpu":
        from ._engines import cpu
        return cpu
    from ._engines import generic
    return generic


@functools.lru_cache(maxsize=None)
def _resolve(xp, device_key, backend):
    for name in (_AUTO_ORDER if backend == "auto" else (backend,)):
        engine = _engine(name)
        if engine.accepts(xp, device_key):
            return engine
    raise ValueError(f"backend={backend!r} cannot serve arrays of {xp.__name__} "
                     f"on device {device_key!r}")


def engine_for(xp, array, backend):
    """The engine module that computes rows for `array` of namespace `xp`."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    return _resolve(xp, str(_device(array)), backend)
