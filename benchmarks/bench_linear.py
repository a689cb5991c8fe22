"""The ops from hidden states + LM head (logits never materialised by ours): the policy loss
forward + backward (``linear_policy_loss``) and the token statistics (``linear_token_stats``),
their variants (naive torch on the materialised logits, our backends) and their peers:

- Liger-Kernel ``LigerFusedLinearGRPOLoss`` (chunked over sequences; pure torch, ``torch.compile``
  of the loss math by default; no entropy, energy or token weights);
- cut-cross-entropy ``linear_cross_entropy(..., reduction="none")``: ``-logp`` without
  materialising the logits, the surrogate then written in torch. ``filter_eps="high"`` (its
  default) skips small gradient entries (approximate); ``filter_eps=None`` is exact.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

import actfocus_kernels as ak
from actfocus_kernels import PolicyLossConfig

from . import naive
from .bench_policy_loss import LOSS_CFG, loss_args, loss_kwargs, peer_loss_expectations
from .case import (
    Case,
    Op,
    Variant,
    backend_variants,
    logp_case,
    loss_case,
    naive_variant,
    peer_loss_case,
    require_peer,
    stats_case,
)
from .inputs import Inputs


def build_naive(op: Op, inputs: Inputs) -> Case:
    x = inputs
    if not op.grad:
        return stats_case(torch.no_grad()(lambda: naive.linear_token_stats(x.hidden, x.weight, x.targets)))

    def compute() -> tuple[Tensor, Tensor]:
        result = naive.linear_policy_loss(x.hidden, x.weight, *loss_args(x), cfg=op.cfg)
        return result.loss, result.logp

    return loss_case(x, compute)


def build_ours(op: Op, inputs: Inputs, backend: str) -> Case:
    x = inputs
    if not op.grad:
        return stats_case(lambda: ak.linear_token_stats(x.hidden.detach(), x.weight.detach(), x.targets,
                                                        backend=backend))

    def compute() -> tuple[Tensor, Tensor]:
        result = ak.linear_policy_loss(x.hidden, x.weight, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                       **loss_kwargs(op, x, backend))
        return result.loss, result.logp

    return loss_case(x, compute)


def liger_fused_linear_grpo(cfg: PolicyLossConfig, is_compiled: bool) -> torch.nn.Module:
    """``LigerFusedLinearGRPOLoss`` set up like our loss: token-mean ("bnpo"), no KL unless
    ``cfg.kl_coef > 0``, one sequence per chunk (its default)."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    return LigerFusedLinearGRPOLoss(
        beta=cfg.kl_coef, compiled=is_compiled, use_ref_model=cfg.kl_coef > 0, epsilon_low=cfg.clip_low,
        epsilon_high=cfg.clip_high, loss_type="bnpo", temperature=cfg.temperature,
    )


def build_liger_linear(op: Op, inputs: Inputs) -> Case:
    require_peer("liger-kernel", inputs.device, cpu_ok=True)
    x = inputs
    is_compiled = x.device.type == "cuda"
    module = liger_fused_linear_grpo(op.cfg, is_compiled)
    mask = x.loss_mask.int()

    def compute() -> Tensor:
        loss, _ = module(x.hidden, x.weight, x.targets, mask, x.advantages, old_per_token_logps=x.old_logp,
                         ref_per_token_logps=x.ref_logp if op.cfg.kl_coef > 0 else None)
        return loss

    note = "no entropy, energy or weights" + ("" if is_compiled else "; compiled=False on CPU (eager loss math)")
    return peer_loss_case(compute, setup=x.zero_grads, note=note)


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


def build_cce(op: Op, inputs: Inputs, filter_eps: Optional[str]) -> Case:
    require_peer("cut-cross-entropy", inputs.device)
    x = inputs
    if not op.grad:
        return logp_case(torch.no_grad()(lambda: cce_logp(x.hidden, x.weight, x.targets, filter_eps)))
    exactness = "exact gradients" if filter_eps is None else f"filter_eps={filter_eps!r}: approximate gradients"
    return loss_case(x, lambda: cce_policy_loss(x.hidden, x.weight, x.targets, x.old_logp, x.advantages,
                                                x.loss_mask, x.weights, op.cfg, filter_eps),
                     note=f"weighted surrogate in torch, no entropy/energy; {exactness}")


SHARED = (naive_variant(build_naive), *backend_variants(build_ours))
CCE = Variant("cce", "peer", "cut-cross-entropy linear_cross_entropy (filter_eps='high', its default) + torch "
              "surrogate", functools.partial(build_cce, filter_eps="high"))

LINEAR_POLICY_LOSS = Op("linear_policy_loss", "policy loss fwd+bwd from hidden states + LM head", linear=True,
                        grad=True, cfg=LOSS_CFG, expectations=peer_loss_expectations, variants=(
    *SHARED,
    Variant("liger fused-linear", "peer", "Liger-Kernel LigerFusedLinearGRPOLoss (chunk_size=1, compiled on GPU)",
            build_liger_linear, reserve_s=60.0),
    CCE,
    Variant("cce exact", "peer", "cut-cross-entropy with filter_eps=None + torch surrogate",
            functools.partial(build_cce, filter_eps=None)),
))
LINEAR_TOKEN_STATS = Op("linear_token_stats", "token stats from hidden states + LM head, no grad", linear=True,
                        grad=False, variants=(*SHARED, CCE))
