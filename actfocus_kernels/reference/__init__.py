"""Plain-torch implementations: the ground truth every other backend is tested against.

They compute in float32, or in float64 when given float64 inputs (how the tests build the judge).
"""
from .policy_loss import policy_loss
from .token_stats import token_stats

__all__ = ["policy_loss", "token_stats"]
