"""One policy-loss call as a validated record (SPEC sections 3-4): ``LossRequest.build`` checks and
flattens every per-token input once, at the public function, whatever the source of the logits.

Per token (flat ``[N]``, in the order of ``layout``): the int64 ``targets``; the loss mask as the
fp32 multiplier ``m`` (0 where the target is ``ignore_index``, ``aggregation.mask_multiplier``); the
action mask; fp32 ``old_logp`` (None: on-policy), ``advantages`` (per sequence ones broadcast),
``ref_logp``, the caller's ``weights`` and the train/rollout mismatch ``correction`` of
``cfg.rollout_is_*`` (from the rollout engine's ``rollout_logp``, ``variants.rollout_correction``);
the turn ids of ActFocus' turn scope. The token weights of the policy term are
resolved by ``token_weights``: the caller's, else ActFocus' (``source="current"``: from the current
policy's statistics; ``source="old"`` with ``uncertainty="nll"``: from ``-old_logp``), else 1,
times the rollout correction's coefficient (``variants.rollout_correction``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .aggregation import loss_scale, mask_multiplier
from .config import ActFocusConfig, LogitTransform, PolicyLossConfig, TokenStats
from .contract import KL_TYPE_IDS, RowLossInputs
from .layout import TokenLayout
from .rollout_correction import RolloutCorrection, rollout_correction
from .rows import check, check_targets, flat_targets
from .weights import token_weights, uncertainty_of


def check_configs(cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig]) -> None:
    check(isinstance(cfg, PolicyLossConfig), f"cfg must be a PolicyLossConfig, got {type(cfg).__name__}", TypeError)
    check(actfocus is None or isinstance(actfocus, ActFocusConfig),
          f"actfocus must be an ActFocusConfig or None, got {type(actfocus).__name__}", TypeError)


@dataclass(frozen=True)
class LossRequest:
    """A policy loss's validated inputs on flat tokens (module docstring) and its configs."""

    layout: TokenLayout
    targets: Tensor
    multiplier: Tensor
    action: Tensor
    turn_ids: Optional[Tensor]
    old_logp: Optional[Tensor]
    advantages: Tensor
    ref_logp: Optional[Tensor]
    correction: Optional[RolloutCorrection]
    weights: Optional[Tensor]
    cfg: PolicyLossConfig
    actfocus: Optional[ActFocusConfig]
    generator: Optional[torch.Generator]

    @classmethod
    def build(cls, targets: Tensor, old_logp: Optional[Tensor], advantages: Tensor, loss_mask: Tensor, *,
              weights: Optional[Tensor], action_mask: Optional[Tensor], ref_logp: Optional[Tensor],
              rollout_logp: Optional[Tensor], cu_seqlens: Optional[Tensor], turn_ids: Optional[Tensor],
              cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig], generator: Optional[torch.Generator],
              vocab: int, name: str = "logits") -> LossRequest:
        """Validate the arguments of ``policy_loss`` / ``linear_policy_loss`` other than the logits
        (or hidden states and head, of vocabulary ``vocab``), which the source checked; ``targets``
        are shaped like the tokens, ``[B, L]`` or packed ``[N]`` with ``cu_seqlens``."""
        check_configs(cfg, actfocus)
        layout = TokenLayout.of(tuple(targets.shape), targets.device, cu_seqlens, name,
                                "V" if name == "logits" else "H")
        check_targets(targets, vocab, cfg.ignore_index)
        flat = flat_targets(targets)
        multiplier = mask_multiplier(loss_mask, flat, layout, cfg.ignore_index)
        action = layout.per_token("action_mask", action_mask)
        turns = layout.per_token("turn_ids", turn_ids)
        old = layout.float_per_token("old_logp", old_logp)
        ref = layout.float_per_token("ref_logp", ref_logp)
        check(cfg.kl_coef == 0 or ref is not None, "cfg.kl_coef > 0 needs ref_logp")
        rollout = layout.float_per_token("rollout_logp", rollout_logp)
        check(cfg.rollout_is_level is None or (rollout is not None and old is not None),
              f"cfg.rollout_is_level={cfg.rollout_is_level!r} needs rollout_logp and old_logp")
        correction = (None if cfg.rollout_is_level is None
                      else rollout_correction(old, rollout, multiplier, layout, cfg))
        given = layout.float_per_token("weights", weights)
        if actfocus is not None:
            check(action_mask is not None, "actfocus weighting needs action_mask")
            check(actfocus.source == "old" or weights is None,
                  "pass either weights or actfocus=ActFocusConfig(source='current'), not both")
            from_old_logp = actfocus.uncertainty == "nll" and old is not None
            check(actfocus.source == "current" or given is not None or from_old_logp,
                  "ActFocusConfig(source='old') needs weights=actfocus_weights(token_stats(old_logits, targets), "
                  "loss_mask, action_mask, cfg) (only uncertainty='nll' can use old_logp directly)")
            computes = actfocus.source == "current" or given is None
            check(actfocus.scope != "turn" or turn_ids is not None or not computes,
                  "ActFocusConfig(scope='turn') needs turn_ids")
        return cls(layout=layout, targets=flat, multiplier=multiplier,
                   action=action > 0 if action is not None else torch.zeros_like(multiplier, dtype=torch.bool),
                   turn_ids=turns, old_logp=old, advantages=layout.advantages(advantages),
                   ref_logp=ref if cfg.kl_coef > 0 else None,
                   correction=correction, weights=given, cfg=cfg,
                   actfocus=actfocus, generator=generator)

    @property
    def mask(self) -> Tensor:
        """The active tokens, ``m > 0``."""
        return self.multiplier > 0

    @property
    def weighted(self) -> bool:
        """Whether the policy term has weights (the caller's, ActFocus', the rollout correction's), not
        the default ones."""
        return self.weights is not None or self.actfocus is not None or self.correction is not None

    def token_weights(self, current_stats: Callable[[], TokenStats]) -> Tensor:
        """The policy term's weights ``[N]``: the caller's, else ActFocus' (``current_stats()``: the
        current policy's detached statistics, needed on the masked action tokens at least), else 1;
        times the rollout correction's coefficient when it is on."""
        weights = self._weights(current_stats)
        return weights if self.correction is None else weights * self.correction.coef.to(torch.float32)

    def _weights(self, current_stats: Callable[[], TokenStats]) -> Tensor:
        actfocus = self.actfocus
        if actfocus is None or (actfocus.source == "old" and self.weights is not None):
            return self.weights if self.weights is not None else torch.ones_like(self.multiplier)
        if actfocus.source == "current":
            uncertainty = uncertainty_of(current_stats(), actfocus.uncertainty)
        else:
            uncertainty = -self.old_logp
        return token_weights(uncertainty, self.mask, self.action, self.layout, self.turn_ids, actfocus)

    def row_inputs(self, weights: Tensor, transform: LogitTransform) -> RowLossInputs:
        """The row contract of the fused kernels, with the aggregation folded into ``scale`` and the
        source's logit ``transform``. KL types without an id (abs, k1+, ...) only run the two-pass path,
        whose kernels never read it."""
        cfg = self.cfg
        return RowLossInputs(
            targets=self.targets, old_logp=self.old_logp, advantages=self.advantages, ref_logp=self.ref_logp,
            weights=weights, scale=loss_scale(self.multiplier, self.layout, cfg), temperature=float(cfg.temperature),
            logit_scale=transform.logit_scale, softcap=transform.softcap,
            clip_low=float(cfg.clip_low), clip_high=float(cfg.clip_high), dual_clip=float(cfg.dual_clip or 0.0),
            kl_coef=float(cfg.kl_coef), kl_type=KL_TYPE_IDS.get(cfg.kl_type, 0), entropy_coef=float(cfg.entropy_coef),
            ignore_index=int(cfg.ignore_index))
