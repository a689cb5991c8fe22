"""The policy loss from logits, forward + backward: its two cases (``policy_loss`` with the
default terms, ``policy_loss_full`` with all of them: entropy bonus, k3 KL, dual clip), its
variants (naive torch, torch.compile, our backends with and without in-place gradients) and its
peer, Liger-Kernel's ``triton_grpo_loss`` (fused GRPO loss from logits: log-prob, clipped
surrogate, optional k3 KL; no entropy, energy or token weights).

Also the loss arguments and the peer-loss expectation the linear loss (bench_linear.py) shares.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from torch import Tensor

import actfocus_kernels as ak
from actfocus_kernels import PolicyLossConfig

from . import naive, peers
from .case import (
    Case,
    Op,
    Variant,
    backend_variants,
    compiled,
    compiled_variant,
    loss_case,
    naive_variant,
    peer_loss_case,
    require_peer,
    restorer,
    small,
)
from .inputs import Inputs

LOSS_CFG = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
FULL_CFG = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.04, kl_type="k3",
                            entropy_coef=0.01)


def loss_args(x: Inputs) -> tuple[Tensor, ...]:
    """The per-token arguments of the naive losses after the logits (or hidden + weight)."""
    return x.targets, x.old_logp, x.advantages, x.loss_mask, x.weights, x.action_mask, x.ref_logp


def loss_kwargs(op: Op, x: Inputs, backend: str) -> dict:
    """The keyword arguments of our losses."""
    return dict(weights=x.weights, action_mask=x.action_mask, ref_logp=x.ref_logp, cfg=op.cfg, backend=backend)


def peer_loss_expectations(op: Op, inputs: Inputs) -> dict[str, Tensor]:
    """Values a peer's loss (no weights, entropy or dual clip) must match: the token-mean clipped
    surrogate (+ k3 KL when the op has one) of the fp32 log-probs."""
    logp = inputs.logp_true
    cfg = dataclasses.replace(op.cfg, dual_clip=None)
    pg_loss, _, _ = naive.surrogate(logp, inputs.old_logp, inputs.advantages.unsqueeze(-1), cfg)
    if op.cfg.kl_coef > 0:
        pg_loss = pg_loss + op.cfg.kl_coef * naive.kl_penalty(logp, inputs.ref_logp, op.cfg.kl_type)
    mask = inputs.loss_mask.float()
    return {"peer_loss": small((pg_loss * mask).sum() / mask.sum().clamp(min=1))}


def _outputs(result) -> tuple[Tensor, Tensor]:
    return result.loss, result.logp


def build_naive(op: Op, inputs: Inputs, is_compiled: bool = False) -> Case:
    loss_fn = functools.partial(naive.policy_loss, cfg=op.cfg)
    if is_compiled:
        loss_fn = compiled(op, loss_fn)
    return loss_case(inputs, lambda: _outputs(loss_fn(inputs.logits, *loss_args(inputs))))


def build_ours(op: Op, inputs: Inputs, backend: str, inplace: bool = False) -> Case:
    x = inputs

    def compute() -> tuple[Tensor, Tensor]:
        return _outputs(ak.policy_loss(x.logits, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                       inplace_grad=inplace, **loss_kwargs(op, x, backend)))

    if not inplace:
        return loss_case(x, compute)
    restore = restorer(x.logits, x.zero_grads)
    return loss_case(x, compute, setup=restore, teardown=restore, note="gradient overwrites the logits")


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


def build_liger(op: Op, inputs: Inputs, inplace: bool = False) -> Case:
    require_peer("liger-kernel", inputs.device)
    x = inputs
    extended = peers.extend_logits(x.logits).requires_grad_(True)
    mask = x.loss_mask.int()

    def reset_grad() -> None:
        extended.grad = None

    return peer_loss_case(
        lambda: liger_grpo_loss(extended, x.targets, x.old_logp, x.advantages, mask, x.ref_logp, op.cfg, inplace),
        setup=restorer(extended, reset_grad) if inplace else reset_grad,
        note="no entropy, energy or weights; logits [B, L+1, V]")


VARIANTS: tuple[Variant, ...] = (
    naive_variant(build_naive),
    compiled_variant(functools.partial(build_naive, is_compiled=True)),
    *backend_variants(build_ours, inplace=True),
    Variant("liger", "peer", "Liger-Kernel triton_grpo_loss (inplace=False); no entropy, energy or weights",
            build_liger),
    Variant("liger inplace", "peer", "Liger-Kernel triton_grpo_loss (inplace=True, its default)",
            functools.partial(build_liger, inplace=True)),
)

POLICY_LOSS = Op("policy_loss", "policy loss fwd+bwd from logits (logp, energy, entropy, weights; clip 0.2/0.28)",
                 linear=False, grad=True, variants=VARIANTS, cfg=LOSS_CFG, expectations=peer_loss_expectations)
POLICY_LOSS_FULL = Op("policy_loss_full",
                      "policy loss fwd+bwd, all terms (entropy bonus 0.01, k3 KL 0.04, dual clip 3)",
                      linear=False, grad=True, variants=VARIANTS, cfg=FULL_CFG, main_only=True,
                      expectations=peer_loss_expectations)
