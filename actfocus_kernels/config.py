"""Configuration and result types of the public API (SPEC sections 3-5).

The field names of the two frozen config dataclasses are part of the public API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3")
UNCERTAINTIES = ("energy", "entropy", "nll")
SCOPES = ("sequence", "turn")
SOURCES = ("old", "current")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class PolicyLossConfig:
    """Clipped PPO/GRPO surrogate (SPEC section 4).

    ratio ``r = exp(clamp(logp - old_logp, -20, 20))``; ``L_pg = max(-A r, -A clip(r, 1-clip_low,
    1+clip_high))``, then ``min(L_pg, -A dual_clip)`` where ``A < 0`` when ``dual_clip`` is set;
    token loss ``w L_pg + kl_coef KL(kl_type) - entropy_coef H``, aggregated by ``agg``.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_type: str = "k3"
    entropy_coef: float = 0.0
    agg: str = "token-mean"
    norm_tokens: Optional[float] = None
    norm_len: Optional[int] = None
    temperature: float = 1.0
    ignore_index: int = -100

    def __post_init__(self) -> None:
        _require(self.clip_low >= 0 and self.clip_high >= 0, "clip_low and clip_high must be >= 0")
        _require(self.dual_clip is None or self.dual_clip > 1, f"dual_clip must be > 1, got {self.dual_clip}")
        _require(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        _require(self.kl_type in KL_TYPES, f"kl_type must be one of {KL_TYPES}, got {self.kl_type!r}")
        _require(self.agg in AGG_MODES, f"agg must be one of {AGG_MODES}, got {self.agg!r}")
        _require(self.norm_tokens is None or self.norm_tokens > 0, "norm_tokens must be > 0")
        _require(self.norm_len is None or self.norm_len > 0, "norm_len must be > 0")
        _require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class ActFocusConfig:
    """ActFocus token weights (SPEC section 3).

    ``reasoning_weight`` is lambda, ``action_weight`` beta_a, ``redistribution`` gamma,
    ``energy_temperature`` tau and ``max_weight`` w_max.
    """

    reasoning_weight: float = 0.5
    action_weight: float = 1.0
    redistribution: float = 1.0
    energy_temperature: float = 1.0
    max_weight: float = 5.0
    uncertainty: str = "energy"
    scope: str = "sequence"
    preserve_total: bool = False
    source: str = "old"

    def __post_init__(self) -> None:
        _require(self.reasoning_weight >= 0, "reasoning_weight must be >= 0")
        _require(self.action_weight >= 0, "action_weight must be >= 0")
        _require(self.energy_temperature > 0, "energy_temperature must be > 0")
        _require(self.max_weight > 0, "max_weight must be > 0")
        _require(self.uncertainty in UNCERTAINTIES, f"uncertainty must be one of {UNCERTAINTIES}")
        _require(self.scope in SCOPES, f"scope must be one of {SCOPES}")
        _require(self.source in SOURCES, f"source must be one of {SOURCES}")


class TokenStats(NamedTuple):
    """Per-token statistics, fp32, shaped like the targets: ``logp = s[y] - lse``,
    ``energy = -T lse``, ``entropy = lse - sum(p s)`` with ``s = z / T``."""

    logp: torch.Tensor
    energy: torch.Tensor
    entropy: torch.Tensor


@dataclass
class PolicyLossOutput:
    """Result of ``policy_loss``: the differentiable scalar ``loss`` and detached diagnostics.

    Per-token tensors are shaped like the targets; ``clipped`` is True where the clip (or dual
    clip) branch is active, so the token's policy-gradient term has zero gradient. Scalar metrics
    are 0-d tensors averaged over the loss mask (0 where the set they average over is empty).
    """

    loss: torch.Tensor
    logp: torch.Tensor
    energy: torch.Tensor
    entropy: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor
    weights: torch.Tensor
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor
    entropy_mean: torch.Tensor
    energy_mean_action: torch.Tensor
    energy_mean_reasoning: torch.Tensor
