"""``nn.Module`` wrappers that carry the configs."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .api import policy_loss
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput


class ActFocusPolicyLoss(nn.Module):
    """``policy_loss`` with its ``PolicyLossConfig``, optional ``ActFocusConfig`` and backend fixed
    at construction; ``forward`` takes the per-batch tensors and keyword arguments of ``policy_loss``."""

    def __init__(
        self,
        cfg: PolicyLossConfig = PolicyLossConfig(),
        actfocus: Optional[ActFocusConfig] = None,
        *,
        inplace_grad: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.cfg, self.actfocus, self.inplace_grad, self.backend = cfg, actfocus, inplace_grad, backend

    def forward(
        self, logits: Tensor, targets: Tensor, old_logp: Optional[Tensor], advantages: Tensor, loss_mask: Tensor, **kwargs
    ) -> PolicyLossOutput:
        kwargs = {"cfg": self.cfg, "actfocus": self.actfocus, "inplace_grad": self.inplace_grad,
                  "backend": self.backend, **kwargs}
        return policy_loss(logits, targets, old_logp, advantages, loss_mask, **kwargs)

    def extra_repr(self) -> str:
        return f"cfg={self.cfg}, actfocus={self.actfocus}, backend={self.backend!r}"
