"""actfocus_kernels: fused RL policy-loss kernels with ActFocus token weighting."""
from .api import actfocus_weights, policy_loss, token_stats
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats
from .linear import linear_policy_loss, linear_token_stats
from .nn import ActFocusPolicyLoss, LinearActFocusPolicyLoss

__version__ = "0.1.0"

__all__ = [
    "ActFocusConfig",
    "ActFocusPolicyLoss",
    "LinearActFocusPolicyLoss",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "TokenStats",
    "actfocus_weights",
    "linear_policy_loss",
    "linear_token_stats",
    "policy_loss",
    "token_stats",
]
