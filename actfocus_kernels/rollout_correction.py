"""The train/rollout mismatch correction (OpenRLHF 0.11.2 ``PolicyLoss`` ``is_correction_*``; TIS,
ICEPOP, seq-mask-TIS and the binary-KL / TV trust regions), a per-token weight of the policy term
known before the pass (``PolicyLossConfig.rollout_is_*``, the ``rollout_logp`` input of the losses).

With ``lr = old_logp - rollout_logp`` (pi_train / pi_rollout, detached) each unit (a token, or a
sequence at ``rollout_is_level="seq"``) is gated by a statistic ``g`` against the band ``[low, high]``:
``gating="ratio"``: ``g = exp(lr)`` per token, ``exp(sum_t m lr / sum_t m)`` per sequence;
``"binary_kl"``: ``g = p log(p/q) + (1-p) log((1-p)/(1-q))`` with ``p = clamp(exp(rollout_logp), 1e-6,
1-1e-6)`` and ``q`` the same of ``old_logp``; ``"tv"``: ``g = |p - q|``; per sequence their masked
mean ``sum_t m g / sum_t m`` (an empty sequence is out of band). Each token's policy term is
multiplied by ``c``: ``mode="mask"``: ``c = exp(lr)`` inside the band, 0 outside (TIS-mask, ICEPOP,
seq-mask-TIS); ``mode="clip"`` (token ratio only): ``c = clamp(exp(lr), low, high)`` (TIS). Metrics: the
filtered share (per token its masked mean, per sequence the mean over all the rows) and the rollout KL
``sum m (rollout_logp - old_logp) / sum m``. A non-finite ``lr`` on an active token gives ``c = NaN``
(SPEC section 2; OpenRLHF filters it silently).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .config import PolicyLossConfig
from .layout import TokenLayout

IS_PROB_CLAMP = 1e-6  # OpenRLHF: p and q clamped to [1e-6, 1 - 1e-6] before the binary-KL logs


class RolloutCorrection(NamedTuple):
    """``coef [N]`` float64 (detached) multiplies each token's policy term (0 off the mask); ``filtered``
    the out-of-band units (``[N]`` per token, ``[S]`` per sequence); the scalar metrics ``filter_frac``
    and ``rollout_kl`` (fp32, 0 where what they average over is empty)."""

    coef: Tensor
    filtered: Tensor
    filter_frac: Tensor
    rollout_kl: Tensor


def _gating_statistic(old: Tensor, rollout: Tensor, m: Tensor, rows: TokenLayout, cfg: PolicyLossConfig) -> Tensor:
    """The gated statistic ``g`` per token ``[N]``, or per sequence ``[S]`` (NaN for an empty one)."""
    seq_level = cfg.rollout_is_level == "seq"

    def seq_mean(x: Tensor) -> Tensor:
        sums = torch.zeros(rows.num_seqs, dtype=x.dtype, device=x.device)
        return sums.index_add(0, rows.seq_ids, m * x) / sums.index_add(0, rows.seq_ids, m)

    if cfg.rollout_is_gating == "ratio":
        log_ratio = old - rollout
        return torch.exp(seq_mean(log_ratio) if seq_level else log_ratio)
    p = torch.exp(rollout).clamp(IS_PROB_CLAMP, 1.0 - IS_PROB_CLAMP)
    q = torch.exp(old).clamp(IS_PROB_CLAMP, 1.0 - IS_PROB_CLAMP)
    if cfg.rollout_is_gating == "binary_kl":
        stat = p * torch.log(p / q) + (1.0 - p) * torch.log((1.0 - p) / (1.0 - q))
    else:
        stat = (p - q).abs()
    return seq_mean(stat) if seq_level else stat


def rollout_correction(old_logp: Tensor, rollout_logp: Tensor, multiplier: Tensor, rows: TokenLayout,
                       cfg: PolicyLossConfig) -> RolloutCorrection:
    """The train/rollout mismatch correction of ``cfg.rollout_is_*`` (see the section comment) on flat
    ``[N]`` detached ``old_logp`` and ``rollout_logp`` with the mask multiplier ``m`` (float64 inside)."""
    mask = multiplier > 0

    def on_mask(x: Tensor) -> Tensor:
        return torch.where(mask, x.detach().to(torch.float64), 0.0)

    old, rollout, m = on_mask(old_logp), on_mask(rollout_logp), on_mask(multiplier)
    log_ratio = old - rollout
    token_is = torch.exp(log_ratio)
    stat = _gating_statistic(old, rollout, m, rows, cfg)
    low, high = cfg.rollout_is_low, cfg.rollout_is_high
    keep = (stat >= low) & (stat <= high)  # NaN (an empty sequence) is out of band
    if cfg.rollout_is_mode == "clip":
        coef = torch.clamp(stat, low, high)
    else:
        coef = torch.where(keep[rows.seq_ids] if cfg.rollout_is_level == "seq" else keep, token_is, 0.0)
    coef = torch.where(mask, torch.where(torch.isfinite(log_ratio), coef, torch.nan), 0.0)
    filtered = ~keep
    total = m.sum()
    denominator = torch.where(total > 0, total, 1.0)
    if cfg.rollout_is_level == "seq":
        filter_frac = filtered.to(torch.float64).sum() / max(rows.num_seqs, 1)
    else:
        filter_frac = (m * filtered).sum() / denominator
    rollout_kl = (m * (rollout - old)).sum() / denominator
    return RolloutCorrection(coef, filtered, filter_frac.to(torch.float32), rollout_kl.to(torch.float32))
