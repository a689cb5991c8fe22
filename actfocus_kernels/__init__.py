"""actfocus_kernels: fused RL policy-loss kernels with ActFocus token weighting."""
from .api import actfocus_weights, policy_loss, token_stats
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats
from .nn import ActFocusPolicyLoss

__version__ = "0.1.0"

__all__ = [
    "ActFocusConfig",
    "ActFocusPolicyLoss",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "TokenStats",
    "actfocus_weights",
    "policy_loss",
    "token_stats",
]
