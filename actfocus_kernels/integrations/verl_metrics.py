"""The metrics verl 0.9.1's own policy losses return (``verl.trainer.ppo.core_algos``), the same
keys and values for each registered mode, from the loss's per-token outputs (``variants.Objective``:
``clipped``, ``second_rule``, ``ratio``) and the inputs; no loss formula is re-derived here.

With verl's ``masked_mean(x) = sum m x / (sum m + 1e-8)`` over the response mask ``m``, ``lr`` the log
ratio ``log_prob - old_log_prob`` and ``lr_c`` the same clamped to ``[-20, 20]``:

- ``actor/ppo_kl``: ``masked_mean(-lr_c)`` for vanilla, dppo_tv, dppo_kl, sapo and cispo;
  ``masked_mean(-lr)`` for gspo, clip_cov, geo_mean and dro; ``masked_mean(|lr|)`` for kl_cov;
- ``actor/pg_clipfrac``: the tokens the ratio clip changed (vanilla: not counting the dual clip;
  gspo, cispo), dppo's tokens outside the trust region, clip_cov's tokens its covariance rule
  dropped (not the ratio-clipped ones), geo_mean's clipped tokens with ``A > 0``; 0 for sapo;
- ``actor/pg_clipfrac_lower``: vanilla's dual-clipped tokens, dppo's in-region tokens whose ratio is
  truncated at ``clip_ratio_c``, geo_mean's clipped tokens with ``A < 0``; 0 for gspo, sapo, cispo;
- gpg returns no metric; kl_cov and dro only ``actor/ppo_kl``; clip_cov no ``pg_clipfrac_lower``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..config import PolicyLossConfig
from ..constants import RATIO_LOG_CLAMP
from ..variants import VERL_MEAN_EPS, Objective
from .verl_inputs import VerlBatch

#: the modes whose ``actor/ppo_kl`` uses the log ratio clamped to [-20, 20], as verl computes it
CLAMPED_KL_MODES = ("vanilla", "dppo_tv", "dppo_kl", "sapo", "cispo")


def masked_mean(x: Tensor, mask: Tensor) -> float:
    """verl's ``masked_mean``: ``sum m x / (sum m + 1e-8)``, ``x`` read on the mask only (a NaN
    off it counts 0)."""
    return float((torch.where(mask.bool(), x, 0.0) * mask).sum() / (mask.sum() + VERL_MEAN_EPS))


def clip_fractions(mode: str, out: Objective, advantages: Tensor,
                   cfg: PolicyLossConfig) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The tokens ``actor/pg_clipfrac`` and ``actor/pg_clipfrac_lower`` count in verl's ``mode``
    (None: verl returns no such key; flat ``[N]`` like ``out``)."""
    clipped = out.clipped
    none = torch.zeros_like(clipped)
    second = none if out.second_rule is None else out.second_rule
    if mode == "vanilla":
        return clipped & ~second, second
    if mode in ("dppo_tv", "dppo_kl"):
        return clipped, (out.ratio > cfg.dppo_ratio_cap) & ~clipped
    if mode == "geo_mean":
        return clipped & (advantages > 0), clipped & (advantages < 0)
    if mode == "clip_cov":
        return second, None
    if mode in ("gspo", "cispo"):
        return clipped, none
    if mode == "sapo":
        return none, none
    return None, None  # gpg, kl_cov, dro


def verl_metrics(mode: str, batch: VerlBatch, out: Objective, cfg: PolicyLossConfig) -> dict[str, float]:
    """verl's metrics of ``mode`` (module docstring).

    Args:
        mode: the verl loss mode (a ``VERL_MODES`` key).
        batch: the checked inputs (``verl_inputs.verl_batch``).
        out: the loss's ``Objective`` on the batch's tokens, flattened row by row.
        cfg: the mode's ``PolicyLossConfig``.

    Returns:
        ``{"actor/...": value}`` with verl's keys for ``mode``.
    """
    if mode == "gpg":
        return {}
    log_ratio = (batch.log_prob.detach() - batch.old_log_prob.detach()).reshape(-1)
    mask = batch.response_mask.reshape(-1).float()
    if mode == "kl_cov":
        return {"actor/ppo_kl": masked_mean(log_ratio.abs(), mask)}
    if mode in CLAMPED_KL_MODES:
        log_ratio = torch.clamp(log_ratio, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    kl = masked_mean(-log_ratio, mask)
    clipfrac, lower = clip_fractions(mode, out, batch.advantages.reshape(-1), cfg)
    metrics = {} if clipfrac is None else {"actor/pg_clipfrac": masked_mean(clipfrac.float(), mask)}
    metrics["actor/ppo_kl"] = kl
    if lower is not None:
        metrics["actor/pg_clipfrac_lower"] = masked_mean(lower.float(), mask)
    return metrics
