"""Token statistics from logits (logp + energy + entropy, no grad): the case, its variants (naive
torch, torch.compile, our backends) and its peer, Liger-Kernel's no-grad
``fused_selective_log_softmax`` (log-prob only)."""
from __future__ import annotations

import functools

import torch
from torch import Tensor

import actfocus_kernels as ak

from . import naive, peers
from .case import (
    Case,
    Op,
    Variant,
    backend_variants,
    compiled,
    compiled_variant,
    logp_case,
    naive_variant,
    require_peer,
    stats_case,
)
from .inputs import Inputs


def build_naive(op: Op, inputs: Inputs, is_compiled: bool = False) -> Case:
    stats_fn = compiled(op, naive.token_stats) if is_compiled else naive.token_stats
    return stats_case(torch.no_grad()(lambda: stats_fn(inputs.logits, inputs.targets)))


def build_ours(op: Op, inputs: Inputs, backend: str) -> Case:
    return stats_case(lambda: ak.token_stats(inputs.logits.detach(), inputs.targets, backend=backend))


def liger_logp(logits_ext: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Liger ``fused_selective_log_softmax``: per-token log-prob only, no grad."""
    from liger_kernel.ops.grpo_loss import fused_selective_log_softmax

    return fused_selective_log_softmax(logits_ext, targets, temperature)


def build_liger_logp(op: Op, inputs: Inputs) -> Case:
    require_peer("liger-kernel", inputs.device)
    extended = peers.extend_logits(inputs.logits)
    return logp_case(lambda: liger_logp(extended, inputs.targets, 1.0))


TOKEN_STATS = Op("token_stats", "token stats: logp + energy + entropy, no grad", linear=False, grad=False, variants=(
    naive_variant(build_naive),
    compiled_variant(functools.partial(build_naive, is_compiled=True)),
    *backend_variants(build_ours),
    Variant("liger logp", "peer", "Liger-Kernel fused_selective_log_softmax (log-prob only)", build_liger_logp),
))
