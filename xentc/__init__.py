"""xentc: fast, exact cross-entropy for any array library."""
from ._api import (cross_entropy, cross_entropy_with_grad, log_softmax, logsumexp, nll_loss,
                   softmax)
from ._config import show_config
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from .metrics import log_loss

__all__ = ["cross_entropy", "cross_entropy_with_grad", "nll_loss", "log_softmax", "softmax", "logsumexp", "show_config",
           "log_loss", "linear_cross_entropy", "linear_cross_entropy_with_grad"]
