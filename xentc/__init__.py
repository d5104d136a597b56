"""xentc: fast, exact cross-entropy for any array library."""
from ._api import cross_entropy, log_softmax, logsumexp, nll_loss, softmax
from ._config import show_config

__all__ = ["cross_entropy", "nll_loss", "log_softmax", "softmax", "logsumexp", "show_config"]
