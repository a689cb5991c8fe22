"""``nn.Module`` wrappers that carry the configs."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .api import policy_loss
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput
from .linear import linear_policy_loss


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
        self, logits: Tensor, targets: Tensor, old_logp: Optional[Tensor], advantages: Tensor, loss_mask: Tensor,
        **kwargs
    ) -> PolicyLossOutput:
        kwargs = {"cfg": self.cfg, "actfocus": self.actfocus, "inplace_grad": self.inplace_grad,
                  "backend": self.backend, **kwargs}
        return policy_loss(logits, targets, old_logp, advantages, loss_mask, **kwargs)

    def extra_repr(self) -> str:
        return f"cfg={self.cfg}, actfocus={self.actfocus}, backend={self.backend!r}"


class LinearActFocusPolicyLoss(nn.Module):
    """``linear_policy_loss`` with its configs, ``chunk_size`` and backend fixed at construction:
    ``forward(hidden, weight, targets, old_logp, advantages, loss_mask, bias=None, **kwargs)`` takes
    the hidden states and the LM head (e.g. ``model.lm_head.weight``) instead of the logits, which
    are never materialised."""

    def __init__(
        self,
        cfg: PolicyLossConfig = PolicyLossConfig(),
        actfocus: Optional[ActFocusConfig] = None,
        *,
        chunk_size: Optional[int] = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.cfg, self.actfocus, self.chunk_size, self.backend = cfg, actfocus, chunk_size, backend

    def forward(
        self, hidden: Tensor, weight: Tensor, targets: Tensor, old_logp: Optional[Tensor], advantages: Tensor,
        loss_mask: Tensor, bias: Optional[Tensor] = None, **kwargs
    ) -> PolicyLossOutput:
        kwargs = {"cfg": self.cfg, "actfocus": self.actfocus, "chunk_size": self.chunk_size,
                  "backend": self.backend, **kwargs}
        return linear_policy_loss(hidden, weight, targets, old_logp, advantages, loss_mask, bias=bias, **kwargs)

    def extra_repr(self) -> str:
        return f"cfg={self.cfg}, actfocus={self.actfocus}, chunk_size={self.chunk_size}, backend={self.backend!r}"
