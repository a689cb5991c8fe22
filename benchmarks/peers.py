"""Which peer libraries this machine has, and the logits layout Liger's kernels share.

The peers' calls live in the op module that measures them (bench_policy_loss.py: Liger
``triton_grpo_loss``; bench_token_stats.py: Liger ``fused_selective_log_softmax``; bench_linear.py:
Liger ``LigerFusedLinearGRPOLoss`` and cut-cross-entropy ``linear_cross_entropy``). Liger's and
CCE's kernels are Triton and need CUDA tensors (on CPU they run only under ``TRITON_INTERPRET=1``,
far too slowly to time); ``LigerFusedLinearGRPOLoss`` also runs on CPU.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Optional

import torch
from torch import Tensor

MODULES = {"liger-kernel": "liger_kernel.transformers.grpo_loss", "cut-cross-entropy": "cut_cross_entropy"}


def version(distribution: str) -> Optional[str]:
    """Installed version of ``distribution`` whose modules import, else None."""
    try:
        importlib.import_module(MODULES[distribution])
        return importlib.metadata.version(distribution)
    except Exception:  # any import failure (missing package, missing CUDA deps) means "not available"
        return None


def extend_logits(logits: Tensor) -> Tensor:
    """``[B, L, V]`` -> Liger's ``[B, L + 1, V]`` layout (position L is a dummy next-token row):
    Liger's logits carry one extra position per sequence, ``[B, L + 1, V]`` predicts ``[B, L]``."""
    batch, length, vocab = logits.shape
    extended = torch.empty((batch, length + 1, vocab), dtype=logits.dtype, device=logits.device)
    extended[:, :length].copy_(logits.detach())
    extended[:, length].normal_()
    return extended
