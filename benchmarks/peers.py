"""Peer libraries, called through their public entry points when importable.

- Liger-Kernel (``liger-kernel``): ``triton_grpo_loss`` (fused GRPO loss from logits: log-prob,
  clipped surrogate, optional k3 KL; no entropy, energy or token weights), its no-grad
  ``fused_selective_log_softmax`` (log-prob only) and ``LigerFusedLinearGRPOLoss`` (hidden states +
  LM head, chunked over sequences; pure torch, ``torch.compile`` of the loss math by default).
  Liger's logits carry one extra position per sequence: ``[B, L + 1, V]`` predicts ``[B, L]``.
- cut-cross-entropy (``cut-cross-entropy``): ``linear_cross_entropy(..., reduction="none")`` gives
  ``-logp`` from hidden states + LM head without materialising the logits; the surrogate is then
  written in torch. ``filter_eps="high"`` (its default) skips small gradient entries
  (approximate); ``filter_eps=None`` is exact.

Liger's and CCE's kernels are Triton and need CUDA tensors (on CPU they run only under
``TRITON_INTERPRET=1``, far too slowly to time); ``LigerFusedLinearGRPOLoss`` also runs on CPU.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Optional

import torch
from torch import Tensor

from actfocus_kernels import PolicyLossConfig

from . import naive


def version(distribution: str) -> Optional[str]:
    """Installed version of ``distribution`` whose modules import, else None."""
    module = {"liger-kernel": "liger_kernel.transformers.grpo_loss", "cut-cross-entropy": "cut_cross_entropy"}
    try:
        importlib.import_module(module[distribution])
        return importlib.metadata.version(distribution)
    except Exception:  # any import failure (missing package, missing CUDA deps) means "not available"
        return None


def extend_logits(logits: Tensor) -> Tensor:
    """``[B, L, V]`` -> Liger's ``[B, L + 1, V]`` layout (position L is a dummy next-token row)."""
    batch, length, vocab = logits.shape
    extended = torch.empty((batch, length + 1, vocab), dtype=logits.dtype, device=logits.device)
    extended[:, :length].copy_(logits.detach())
    extended[:, length].normal_()
    return extended


def liger_grpo_loss(logits_ext: Tensor, targets: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor,
                    ref_logp: Optional[Tensor], cfg: PolicyLossConfig, inplace: bool) -> Tensor:
    """Liger ``triton_grpo_loss``, token-mean ("bnpo") reduction, k3 KL when ``cfg.kl_coef > 0``."""
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    loss, _ = triton_grpo_loss(
        logits_ext, old_logp, ref_logp if cfg.kl_coef > 0 else None, targets, advantages, loss_mask,
        temperature=cfg.temperature, beta=cfg.kl_coef, eps_low=cfg.clip_low, eps_high=cfg.clip_high,
        inplace=inplace, loss_type="bnpo", reduce=True,
    )
    return loss


def liger_logp(logits_ext: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Liger ``fused_selective_log_softmax``: per-token log-prob only, no grad."""
    from liger_kernel.ops.grpo_loss import fused_selective_log_softmax

    return fused_selective_log_softmax(logits_ext, targets, temperature)


def liger_fused_linear_grpo(cfg: PolicyLossConfig, compiled: bool) -> torch.nn.Module:
    """``LigerFusedLinearGRPOLoss`` set up like our loss: token-mean ("bnpo"), no KL unless
    ``cfg.kl_coef > 0``, one sequence per chunk (its default)."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    return LigerFusedLinearGRPOLoss(
        beta=cfg.kl_coef, compiled=compiled, use_ref_model=cfg.kl_coef > 0, epsilon_low=cfg.clip_low,
        epsilon_high=cfg.clip_high, loss_type="bnpo", temperature=cfg.temperature,
    )


def cce_logp(hidden: Tensor, weight: Tensor, targets: Tensor, filter_eps: Optional[str]) -> Tensor:
    """``-linear_cross_entropy(hidden, weight, targets, reduction="none")``: per-token log-prob."""
    from cut_cross_entropy import linear_cross_entropy

    logp = -linear_cross_entropy(hidden, weight, targets, reduction="none", filter_eps=filter_eps)
    return logp.view(targets.shape)


def cce_policy_loss(hidden: Tensor, weight: Tensor, targets: Tensor, old_logp: Tensor, advantages: Tensor,
                    loss_mask: Tensor, weights: Tensor, cfg: PolicyLossConfig,
                    filter_eps: Optional[str]) -> tuple[Tensor, Tensor]:
    """``(loss, logp)``: CCE log-probs + the weighted clipped surrogate in torch (no entropy or
    energy: CCE gives only the target's log-prob)."""
    scaled = hidden if cfg.temperature == 1.0 else hidden / cfg.temperature
    logp = cce_logp(scaled, weight, targets, filter_eps)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    pg_loss, _, _ = naive.surrogate(logp, old_logp, advantages, cfg)
    return naive.aggregate(weights * pg_loss, loss_mask.float(), cfg), logp
