"""xentc: fast, exact cross-entropy for any array library."""
import importlib.metadata as _metadata

try:
    from . import _core  # noqa: F401  (the engines import it lazily; here only to say why not)
except ImportError as _exc:
    # The source folder shadows the installed package when Python runs in the
    # repository's root (`python -m xentc` after `pip install .`): it has the
    # Cython source beside this file but no compiled module. NumPy says the same.
    import os as _os
    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(_here, "_core.pyx")):
        raise ImportError(
            f"you are importing xentc from its source tree ({_here}), which has no compiled "
            f"core: run Python from another folder to use the installed xentc, or install "
            f"it in editable mode: pip install meson-python meson ninja Cython numpy && "
            f"pip install --no-build-isolation -e .") from _exc
    # An installed core that fails to load stops only the CPU engine (see _dispatch).
    del _os, _here

from ._api import (cross_entropy, cross_entropy_with_grad, log_softmax, logsumexp, nll_loss,
                   softmax)
from ._config import show_config
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from .metrics import log_loss

try:
    __version__ = _metadata.version("xentc")
except _metadata.PackageNotFoundError:  # imported without being installed (vendored)
    __version__ = "0+unknown"

__all__ = ["cross_entropy", "cross_entropy_with_grad", "nll_loss", "log_softmax", "softmax", "logsumexp", "show_config",
           "log_loss", "linear_cross_entropy", "linear_cross_entropy_with_grad"]
