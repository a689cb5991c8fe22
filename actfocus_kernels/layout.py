"""The token layout of a call: which sequence each token belongs to, from shapes alone.

Tokens come padded ``[B, L]`` (row b is sequence b) or packed ``[N]``: one sequence, or the ``S``
sequences ``cu_seqlens [S + 1]`` delimits (``cu_seqlens = [0, n_1, n_1 + n_2, ..., N]``). The layout
is what the aggregation modes and the ActFocus scopes need; it is computed from the token shape and
``cu_seqlens`` only, never from a tensor built to learn it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .rows import check, check_tensor


@dataclass(frozen=True)
class TokenLayout:
    """The sequence structure of ``N`` tokens shaped ``token_shape`` (``[B, L]`` or ``[N]``):
    ``seq_ids [N]`` int64 (each token's sequence), ``num_seqs`` and ``padded_len`` (``L``, or the
    longest packed sequence)."""

    token_shape: tuple
    seq_ids: Tensor
    num_seqs: int
    padded_len: int

    @property
    def num_tokens(self) -> int:
        return self.seq_ids.shape[0]

    @classmethod
    def of(cls, token_shape: tuple, device: torch.device, cu_seqlens: Optional[Tensor] = None,
           name: str = "logits", dim: str = "V") -> TokenLayout:
        """The layout of tokens shaped ``token_shape`` (``[B, L]``, or packed ``[N]`` with optional
        ``cu_seqlens``); ``name [..., dim]`` names the tokens' tensor in error messages."""
        token_shape = tuple(token_shape)
        if len(token_shape) == 2:
            check(cu_seqlens is None, f"cu_seqlens is for packed [N, {dim}] {name}, got [B, L, {dim}]")
            batch, length = token_shape
            seq_ids = torch.arange(batch, device=device).repeat_interleave(length)
            return cls(token_shape, seq_ids, batch, length)
        check(len(token_shape) == 1, f"tokens must be [B, L] or packed [N], got shape {token_shape}")
        (num_tokens,) = token_shape
        if cu_seqlens is None:
            return cls(token_shape, torch.zeros(num_tokens, dtype=torch.int64, device=device), 1, num_tokens)
        check_tensor("cu_seqlens", cu_seqlens, None, device, floating=False)
        check(not cu_seqlens.is_floating_point() and not cu_seqlens.is_complex() and cu_seqlens.dtype != torch.bool,
              f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}", TypeError)
        check(cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 2,
              f"cu_seqlens must be 1-D [S + 1] with S >= 1 sequences ([0, ..., N]), got shape "
              f"{tuple(cu_seqlens.shape)}" + (f" {cu_seqlens.tolist()}" if cu_seqlens.numel() <= 8 else ""))
        lengths = cu_seqlens.diff()
        if not torch.compiler.is_compiling():
            check(int(cu_seqlens[0]) == 0 and int(cu_seqlens[-1]) == num_tokens and bool((lengths >= 0).all()),
                  f"cu_seqlens must rise from 0 to N={num_tokens}, got {cu_seqlens.tolist()}")
        num_seqs = cu_seqlens.numel() - 1
        seq_ids = torch.arange(num_seqs, device=device).repeat_interleave(lengths, output_size=num_tokens)
        padded_len = int(lengths.max()) if num_tokens > 0 else 1
        return cls(token_shape, seq_ids, num_seqs, padded_len)

    def per_seq(self, values: Tensor) -> Tensor:
        """``[S]`` sums of per-token ``values [N]`` over each sequence (differentiable)."""
        zeros = torch.zeros(self.num_seqs, dtype=values.dtype, device=values.device)
        return zeros.index_add(0, self.seq_ids, values)

    def per_token(self, name: str, value: Optional[Tensor]) -> Optional[Tensor]:
        """A per-token input shaped like the tokens -> flat ``[N]`` (any dtype)."""
        if value is None:
            return None
        check_tensor(name, value, self.token_shape, self.seq_ids.device, floating=False)
        return value.reshape(-1)

    def float_per_token(self, name: str, value: Optional[Tensor]) -> Optional[Tensor]:
        """A floating per-token input shaped like the tokens -> contiguous fp32 ``[N]``."""
        if value is None:
            return None
        check_tensor(name, value, self.token_shape, self.seq_ids.device)
        return value.reshape(-1).to(torch.float32).contiguous()

    def advantages(self, advantages: Tensor) -> Tensor:
        """Per token, or one per sequence (``[B]`` padded, ``[S]`` packed) broadcast over its tokens:
        contiguous fp32 ``[N]``."""
        check_tensor("advantages", advantages, None, self.seq_ids.device)
        if tuple(advantages.shape) == self.token_shape:
            flat = advantages.reshape(-1)
        else:
            check(advantages.dim() == 1 and advantages.shape[0] == self.num_seqs,
                  f"advantages must have shape {self.token_shape} (per token) or [{self.num_seqs}] "
                  f"(per sequence), got {tuple(advantages.shape)}")
            flat = advantages[self.seq_ids]
        return flat.to(torch.float32).contiguous()
