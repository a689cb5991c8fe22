"""Aggregation of per-token losses (SPEC section 4): the loss mask as a multiplier and each mode's
normaliser folded into ``scale = d loss / d token_loss``, so that ``loss = sum_t scale_t l_t``.

With ``m`` the mask multiplier (0 off the mask and where the target is ignored):

    token-mean               scale = m / n_tok          n_tok = norm_tokens or max(sum m, 1)
    token-sum                scale = m
    seq-mean-token-mean      scale = m / (sum_{t in i} m * n_seq)
    seq-mean-token-sum       scale = m / n_seq
    seq-mean-token-sum-norm  scale = m / (n_seq * norm_len)   norm_len = cfg.norm_len or the padded length

``n_seq`` is ``norm_seqs`` when given (a global count), else the sequences with ``sum m > 0``
(``empty_seqs="skip"``, verl's local convention and seq-mean-token-mean's default) or every sequence
(``"count"``, TRL's grpo; the default of the other seq modes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import PolicyLossConfig
from .layout import TokenLayout


def mask_multiplier(loss_mask: Tensor, targets: Tensor, layout: TokenLayout, ignore_index: int) -> Tensor:
    """The loss mask as the fp32 multiplier ``m [N]`` (a token is active iff ``m > 0`` and counts
    ``m`` in every sum), 0 where the flat ``targets`` are ``ignore_index``."""
    m = layout.per_token("loss_mask", loss_mask).to(torch.float32)
    if not torch.compiler.is_compiling() and m.numel() > 0:
        bad = ~(torch.isfinite(m) & (m >= 0))
        if bool(bad.any()):
            index = int(bad.nonzero()[0])
            raise ValueError(f"loss_mask must be finite and >= 0 (a multiplier), got {float(m[index])} at flat "
                             f"position {index}")
    return torch.where(targets != ignore_index, m, 0.0)


def sequence_count(m: Tensor, layout: TokenLayout, cfg: PolicyLossConfig, skip_empty: bool):
    """``n_seq`` of the seq-mean modes (module docstring); ``skip_empty`` is the mode's default."""
    if cfg.norm_seqs is not None:
        return cfg.norm_seqs
    if cfg.empty_seqs == "skip" or (cfg.empty_seqs is None and skip_empty):
        return (layout.per_seq(m) > 0).sum().clamp(min=1)
    return max(layout.num_seqs, 1)


def token_count(m: Tensor, cfg: PolicyLossConfig):
    """The token-mean denominator: ``cfg.norm_tokens`` when given, else ``max(sum m, 1)``."""
    return cfg.norm_tokens if cfg.norm_tokens is not None else m.sum().clamp(min=1.0)


def loss_scale(m: Tensor, layout: TokenLayout, cfg: PolicyLossConfig) -> Tensor:
    """``d loss / d l_t`` of the mode ``cfg.agg`` with mask multipliers ``m`` (module docstring)."""
    if cfg.agg == "token-mean":
        return m / token_count(m, cfg)
    if cfg.agg == "token-sum":
        return m
    if cfg.agg == "seq-mean-token-mean":
        per_seq = layout.per_seq(m)
        return m / (torch.where(per_seq > 0, per_seq, 1.0)[layout.seq_ids] * sequence_count(m, layout, cfg, True))
    if cfg.agg == "seq-mean-token-sum":
        return m / sequence_count(m, layout, cfg, False)
    norm_len = cfg.norm_len if cfg.norm_len is not None else layout.padded_len
    return m / (sequence_count(m, layout, cfg, False) * norm_len)
