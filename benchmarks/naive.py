"""The naive torch code RL trainers run today (verl / TRL style): the benchmarks' baseline.

Upcast the logits to fp32, ``log_softmax`` over the vocabulary, ``gather`` the target log-probs,
entropy from the softmax (``logsumexp(s) - sum(softmax(s) * s)``), energy from ``logsumexp``, the
clipped PPO/GRPO surrogate, ActFocus weights in torch, and autograd for the gradient. Every
``[B, L, V]`` intermediate is materialised: that is the cost the fused kernels remove.

Written from SPEC sections 2-4 on padded ``[B, L, V]`` logits and ``[B, L]`` per-token tensors
(advantages ``[B, L]`` or one per sequence ``[B]``), independently of ``actfocus_kernels``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from actfocus_kernels import ActFocusConfig, PolicyLossConfig
from actfocus_kernels.constants import RATIO_LOG_CLAMP, STD_EPS


class NaiveLossOutput(NamedTuple):
    """What a trainer's loss function returns: the loss and the metrics it logs."""

    loss: Tensor
    logp: Tensor
    energy: Tensor
    entropy: Tensor
    ratio: Tensor
    clip_frac: Tensor
    approx_kl: Tensor
    energy_mean_action: Tensor
    energy_mean_reasoning: Tensor


def entropy_from_logits(scaled: Tensor) -> Tensor:
    """``H = logsumexp(s) - sum_v softmax(s)_v s_v`` over the last dimension (verl's formula)."""
    probs = torch.softmax(scaled, dim=-1)
    return torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(-1)


def token_stats(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(logp, energy, entropy)`` of ``logits [..., V]`` at ``targets [...]``, fp32 (SPEC section 2)."""
    scaled = logits.float() / temperature
    log_probs = torch.log_softmax(scaled, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    energy = -temperature * torch.logsumexp(scaled, dim=-1)
    return logp, energy, entropy_from_logits(scaled)


def actfocus_weights(uncertainty: Tensor, loss_mask: Tensor, action_mask: Tensor,
                     cfg: ActFocusConfig = ActFocusConfig()) -> Tensor:
    """ActFocus weights (SPEC section 3) with one scope per sequence, on ``[B, L]`` tensors.

    On the action tokens A of a row: ``e = (u - mean_A u) / (std_A u + 1e-6)`` (0 when |A| < 2),
    ``q = softmax_A(e / tau)``, ``w = min(w_max, beta_a (1 + gamma (|A| q - 1)))``; ``lambda`` on
    reasoning tokens, 0 off the mask; ``preserve_total`` rescales each row to its token count.
    """
    mask = loss_mask.bool()
    action = mask & action_mask.bool()
    reasoning = mask & ~action_mask.bool()
    u = uncertainty.float()
    count = action.sum(-1, keepdim=True).float()
    mean = torch.where(action, u, 0.0).sum(-1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(action, u - mean, 0.0)
    std = (centred.square().sum(-1, keepdim=True) / count.clamp(min=1)).sqrt()
    standardised = torch.where(count >= 2, centred / (std + STD_EPS), 0.0)
    q = torch.softmax(torch.where(action, standardised / cfg.energy_temperature, float("-inf")), dim=-1)
    q = torch.where(action, q, 0.0)  # rows without action tokens: softmax of all -inf is NaN
    action_weight = torch.clamp(cfg.action_weight * (1 + cfg.redistribution * (count * q - 1)), max=cfg.max_weight)
    weights = torch.where(action, action_weight, torch.where(reasoning, cfg.reasoning_weight, 0.0))
    if cfg.preserve_total:
        total = weights.sum(-1, keepdim=True)
        tokens = mask.sum(-1, keepdim=True).float()
        weights = torch.where(total != 0, weights * tokens / torch.where(total != 0, total, 1.0), weights)
    return weights


def surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor,
              cfg: PolicyLossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate ``(L_pg, ratio, clipped)`` with the optional dual clip (SPEC section 4)."""
    ratio = torch.exp(torch.clamp(logp - old_logp, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if cfg.dual_clip is not None:
        dual = -advantages * cfg.dual_clip
        clipped = clipped | ((advantages < 0) & (loss > dual))
        loss = torch.where(advantages < 0, torch.minimum(loss, dual), loss)
    return loss, ratio, clipped


def kl_penalty(logp: Tensor, ref_logp: Tensor, kl_type: str) -> Tensor:
    """k1 ``logp - ref``; k2 ``(logp - ref)^2 / 2``; k3 ``exp(ref - logp) - (ref - logp) - 1``."""
    diff = logp - ref_logp
    if kl_type == "k1":
        return diff
    if kl_type == "k2":
        return 0.5 * diff.square()
    return torch.exp(-diff) + diff - 1


def aggregate(token_loss: Tensor, mask: Tensor, cfg: PolicyLossConfig) -> Tensor:
    """SPEC section 4's aggregation of ``[B, L]`` token losses over the float mask."""
    if cfg.agg == "token-mean":
        denominator = cfg.norm_tokens if cfg.norm_tokens is not None else mask.sum().clamp(min=1)
        return (token_loss * mask).sum() / denominator
    per_seq = (token_loss * mask).sum(-1)
    if cfg.agg == "seq-mean-token-mean":
        counts = mask.sum(-1)
        present = counts > 0
        return (per_seq / counts.clamp(min=1))[present].sum() / present.sum().clamp(min=1)
    if cfg.agg == "seq-mean-token-sum":
        return per_seq.mean()
    norm_len = cfg.norm_len if cfg.norm_len is not None else mask.shape[-1]
    return per_seq.sum() / (mask.shape[0] * norm_len)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logits: Tensor, targets: Tensor, old_logp: Tensor, advantages: Tensor, loss_mask: Tensor,
                weights: Tensor, action_mask: Tensor, ref_logp: Optional[Tensor] = None,
                cfg: PolicyLossConfig = PolicyLossConfig()) -> NaiveLossOutput:
    """Weighted clipped policy loss of ``logits [B, L, V]`` (SPEC section 4) the way trainers write it.

    ``l = w L_pg + kl_coef KL - entropy_coef H``, aggregated by ``cfg.agg``. The entropy is computed
    for the metrics either way and differentiated only when ``entropy_coef > 0``.
    """
    temperature = cfg.temperature
    scaled = logits.float() / temperature
    log_probs = torch.log_softmax(scaled, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.entropy_coef > 0):
        entropy = entropy_from_logits(scaled)
    with torch.no_grad():
        energy = -temperature * torch.logsumexp(scaled, dim=-1)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    pg_loss, ratio, clipped = surrogate(logp, old_logp, advantages, cfg)
    token_loss = weights * pg_loss
    if cfg.kl_coef > 0:
        token_loss = token_loss + cfg.kl_coef * kl_penalty(logp, ref_logp, cfg.kl_type)
    if cfg.entropy_coef > 0:
        token_loss = token_loss - cfg.entropy_coef * entropy
    mask = loss_mask.float()
    loss = aggregate(token_loss, mask, cfg)
    with torch.no_grad():
        action = mask * action_mask.float()
        return NaiveLossOutput(
            loss=loss,
            logp=logp.detach(),
            energy=energy,
            entropy=entropy.detach(),
            ratio=ratio.detach(),
            clip_frac=_masked_mean(clipped.float(), mask),
            approx_kl=_masked_mean(old_logp - logp.detach(), mask),
            energy_mean_action=_masked_mean(energy, action),
            energy_mean_reasoning=_masked_mean(energy, mask - action),
        )


def linear_token_stats(hidden: Tensor, weight: Tensor, targets: Tensor,
                       temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``token_stats`` of the LM-head logits ``hidden [B, L, H] @ weight[V, H]^T`` (materialised)."""
    return token_stats(hidden @ weight.t(), targets, temperature)


def linear_policy_loss(hidden: Tensor, weight: Tensor, targets: Tensor, old_logp: Tensor, advantages: Tensor,
                       loss_mask: Tensor, weights: Tensor, action_mask: Tensor, ref_logp: Optional[Tensor] = None,
                       cfg: PolicyLossConfig = PolicyLossConfig()) -> NaiveLossOutput:
    """``policy_loss`` of the LM-head logits ``hidden [B, L, H] @ weight[V, H]^T`` (materialised)."""
    return policy_loss(hidden @ weight.t(), targets, old_logp, advantages, loss_mask, weights, action_mask,
                       ref_logp, cfg)
