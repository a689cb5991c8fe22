"""Plain-torch implementations: the ground truth every other backend is tested against.

They compute in float32, or in float64 when given float64 inputs (how the tests build the judge).
``policy_loss``, ``row_gradient`` and ``token_stats`` implement the row contract (``actfocus_kernels.contract``);
``actfocus_weights`` (``scope_weights``) is the only implementation of the ActFocus weights.
"""
from .actfocus_weights import scope_weights
from .policy_loss import policy_loss
from .row_gradient import row_gradient
from .token_stats import token_stats

__all__ = ["policy_loss", "row_gradient", "scope_weights", "token_stats"]
