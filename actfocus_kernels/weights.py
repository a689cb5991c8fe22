"""ActFocus token weights on flat tokens (SPEC section 3), through ``actfocus::actfocus_weights``.

In each scope (a sequence, or a turn with ``scope="turn"``) the action tokens ``A`` (mask and action)
get ``min(w_max, beta_a (1 + gamma (|A| q_t - 1)))`` with ``q = softmax_A(standardised u / tau)``, the
reasoning tokens ``lambda``, the rest 0 (``reference.scope_weights`` has the formula). The
uncertainty ``u`` is the energy, the entropy or ``nll = -logp`` of some policy's statistics.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .config import ActFocusConfig, TokenStats
from .layout import TokenLayout
from .rows import check


def uncertainty_of(stats: TokenStats, kind: str) -> Tensor:
    """The uncertainty ``ActFocusConfig.uncertainty`` names: energy, entropy or ``nll = -logp``."""
    return {"energy": stats.energy, "entropy": stats.entropy, "nll": -stats.logp}[kind]


def token_weights(uncertainty: Tensor, mask: Tensor, action: Tensor, layout: TokenLayout,
                  turn_ids: Optional[Tensor], cfg: ActFocusConfig) -> Tensor:
    """ActFocus weights ``[N]`` fp32 of flat per-token inputs (``mask``, ``action``: bool ``[N]``)."""
    if cfg.scope == "turn":
        check(turn_ids is not None, "ActFocusConfig(scope='turn') needs turn_ids")
    return torch.ops.actfocus.actfocus_weights(
        uncertainty.detach().reshape(-1), mask, action, layout.seq_ids,
        turn_ids if cfg.scope == "turn" else None, float(cfg.reasoning_weight), float(cfg.action_weight),
        float(cfg.redistribution), float(cfg.energy_temperature), float(cfg.max_weight), bool(cfg.preserve_total),
    )
