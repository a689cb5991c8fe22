"""Configuration and result types of the public API (SPEC sections 3-5).

The field names of the two frozen config dataclasses are part of the public API.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3", "abs", "k1+", "abs+", "k3+", "low_var_kl")
POLICIES = ("ppo", "gspo", "gspo_token", "cispo", "cispo_two_sided", "sapo", "gpg", "gmpo", "clip_cov", "kl_cov",
            "dro", "dppo_tv", "dppo_kl", "vespo")
ENTROPY_AGGS = ("token-mean",)
EMPTY_SEQS = ("skip", "count")
UNCERTAINTIES = ("energy", "entropy", "nll")
SCOPES = ("sequence", "turn")
SOURCES = ("old", "current")
ROLLOUT_IS_LEVELS = ("token", "seq")
ROLLOUT_IS_MODES = ("mask", "clip")
ROLLOUT_IS_GATINGS = ("ratio", "binary_kl", "tv")


INT64_RANGE = (-(2 ** 63), 2 ** 63 - 1)


def check_number(owner: str, name: str, value: Any, *, low: float = -math.inf, low_open: bool = False,
                 high: float = math.inf, integer: bool = False, optional: bool = False) -> None:
    """``value`` must be a finite real number (an int when ``integer``) ``>= low`` (``> low`` when
    ``low_open``) and ``<= high``, or None when ``optional``: else a ``TypeError`` / ``ValueError``
    naming ``owner.name`` and the value."""
    if optional and value is None:
        return
    kind = "an int" if integer else "a finite number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise TypeError(f"{owner}.{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")
    if integer and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise ValueError(f"{owner}.{name} must fit in int64, got {value!r}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{owner}.{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if value > high:
        raise ValueError(f"{owner}.{name} must be <= {high}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def check_temperature(owner: str, value: Any) -> None:
    """Any finite float > 0 (SPEC section 2)."""
    check_number(owner, "temperature", value, low=0.0, low_open=True)


def check_ignore_index(owner: str, value: Any) -> None:
    check_number(owner, "ignore_index", value, integer=True)


@dataclass(frozen=True)
class PolicyLossConfig:
    """A PPO-family policy loss (SPEC sections 4 and 4.1); ``actfocus_kernels.variants`` has the math.

    ``policy="ppo"``: ratio ``r = exp(clamp(logp - old_logp, -20, 20))``; ``L_pg = max(-A min(r, delta),
    -A clip(r, 1-clip_low, 1+clip_high))``, then ``min(L_pg, -A dual_clip)`` where ``A < 0`` when
    ``dual_clip`` is set. The other ``policy`` values are TRL's and verl's variants (``POLICIES``;
    their parameters: ``delta``, ``sapo_tau_*``, ``clip_cov_*``, ``kl_cov_*``, ``dro_beta``,
    ``dppo_ratio_cap``, ``vespo_*``).
    Token loss ``w L_pg + kl_coef KL(kl_type) - entropy_coef H`` (the KL times the importance ratio
    with ``kl_bias_correction``), aggregated by ``agg`` with the normalisers ``norm_tokens``,
    ``norm_seqs``, ``norm_len`` and ``empty_seqs``; the entropy term by ``entropy_agg`` when given.
    ``rollout_is_*`` (off when ``rollout_is_level`` is None): the train/rollout mismatch correction of
    the policy term by ``rollout_logp`` (``variants.rollout_correction``: TIS, ICEPOP, seq-mask-TIS,
    binary-KL / TV trust regions), a band ``[rollout_is_low, rollout_is_high]`` per token or sequence.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_type: str = "k3"
    entropy_coef: float = 0.0
    agg: str = "token-mean"
    norm_tokens: Optional[float] = None
    norm_len: Optional[int] = None
    temperature: float = 1.0
    ignore_index: int = -100
    policy: str = "ppo"
    delta: Optional[float] = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    clip_cov_ratio: float = 0.0002
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.0002
    kl_cov_coef: float = 0.1
    dro_beta: float = 1.0
    dppo_ratio_cap: float = 3.0
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    kl_bias_correction: bool = False
    entropy_agg: Optional[str] = None
    norm_seqs: Optional[float] = None
    empty_seqs: Optional[str] = None
    rollout_is_level: Optional[str] = None
    rollout_is_mode: str = "mask"
    rollout_is_gating: str = "ratio"
    rollout_is_low: float = 0.5
    rollout_is_high: float = 5.0

    def __post_init__(self) -> None:
        owner = "PolicyLossConfig"
        check_number(owner, "clip_low", self.clip_low, low=0.0)
        check_number(owner, "clip_high", self.clip_high, low=0.0)
        check_number(owner, "dual_clip", self.dual_clip, low=1.0, low_open=True, optional=True)
        check_number(owner, "kl_coef", self.kl_coef, low=0.0)
        check_choice(owner, "kl_type", self.kl_type, KL_TYPES)
        check_number(owner, "entropy_coef", self.entropy_coef)
        check_choice(owner, "agg", self.agg, AGG_MODES)
        check_number(owner, "norm_tokens", self.norm_tokens, low=0.0, low_open=True, optional=True)
        check_number(owner, "norm_len", self.norm_len, low=0, low_open=True, integer=True, optional=True)
        check_temperature(owner, self.temperature)
        check_ignore_index(owner, self.ignore_index)
        check_choice(owner, "policy", self.policy, POLICIES)
        self._check_variant_ranges(owner)
        if not isinstance(self.kl_bias_correction, bool):
            raise TypeError(f"{owner}.kl_bias_correction must be a bool, got {self.kl_bias_correction!r}")
        if self.entropy_agg is not None:
            check_choice(owner, "entropy_agg", self.entropy_agg, ENTROPY_AGGS)
        check_number(owner, "norm_seqs", self.norm_seqs, low=0.0, low_open=True, optional=True)
        if self.empty_seqs is not None:
            check_choice(owner, "empty_seqs", self.empty_seqs, EMPTY_SEQS)
        if self.dual_clip is not None and self.policy not in ("ppo", "gspo"):
            raise ValueError(f"{owner}.dual_clip is a policy 'ppo' or 'gspo' option, got policy={self.policy!r}")
        if self.delta is not None and self.policy not in ("ppo", "gspo"):
            raise ValueError(f"{owner}.delta caps the ratio of policy 'ppo' or 'gspo', got policy={self.policy!r}")
        self._check_rollout_correction(owner)

    def _check_rollout_correction(self, owner: str) -> None:
        """The train/rollout mismatch correction (``variants.rollout_correction``; OpenRLHF's rules)."""
        if self.rollout_is_level is not None:
            check_choice(owner, "rollout_is_level", self.rollout_is_level, ROLLOUT_IS_LEVELS)
        check_choice(owner, "rollout_is_mode", self.rollout_is_mode, ROLLOUT_IS_MODES)
        check_choice(owner, "rollout_is_gating", self.rollout_is_gating, ROLLOUT_IS_GATINGS)
        for name in ("rollout_is_low", "rollout_is_high"):  # a band edge may be infinite (one-sided)
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise TypeError(f"{owner}.{name} must be a real number (not NaN), got {value!r}")
        if self.rollout_is_low > self.rollout_is_high:
            raise ValueError(f"{owner}.rollout_is_low must be <= {owner}.rollout_is_high (the band "
                             f"[low, high]), got {self.rollout_is_low!r} > {self.rollout_is_high!r}")
        if self.rollout_is_level is None:
            return
        if self.rollout_is_mode == "clip" and (self.rollout_is_level != "token" or self.rollout_is_gating != "ratio"):
            raise ValueError(f"{owner}.rollout_is_mode='clip' clamps a per-token ratio: it needs "
                             f"rollout_is_level='token' and rollout_is_gating='ratio', got "
                             f"{self.rollout_is_level!r} and {self.rollout_is_gating!r}")
        if self.rollout_is_gating != "ratio" and self.rollout_is_low > 0:
            raise ValueError(f"{owner}.rollout_is_gating={self.rollout_is_gating!r} bounds a divergence from above "
                             f"only: rollout_is_low must be <= 0, got {self.rollout_is_low!r}")

    def _check_variant_ranges(self, owner: str) -> None:
        """The range of every variant parameter: ``delta > 1`` (a cap below 1 would clip the unclipped
        ratio), ``sapo_tau_* > 0``, the selected shares ``clip_cov_ratio``, ``kl_cov_ratio`` in
        ``(0, 1]``, ``clip_cov_lb < clip_cov_ub``, ``kl_cov_coef >= 0``, ``dro_beta > 0`` (verl
        raises otherwise), ``dppo_ratio_cap >= 1`` (a truncation cap), ``vespo_k_* >= 0`` (the
        gamma weight's power) and ``vespo_lambda_* >= 0`` (its decay; TRL clamps it to ``>= 1e-4``)."""
        check_number(owner, "delta", self.delta, low=1.0, low_open=True, optional=True)
        for name in ("sapo_tau_pos", "sapo_tau_neg", "dro_beta"):
            check_number(owner, name, getattr(self, name), low=0.0, low_open=True)
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            check_number(owner, name, getattr(self, name), low=0.0, low_open=True, high=1.0)
        check_number(owner, "clip_cov_lb", self.clip_cov_lb)
        check_number(owner, "clip_cov_ub", self.clip_cov_ub)
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(f"{owner}.clip_cov_lb must be < clip_cov_ub, got clip_cov_lb={self.clip_cov_lb!r} "
                             f"and clip_cov_ub={self.clip_cov_ub!r}")
        check_number(owner, "kl_cov_coef", self.kl_cov_coef, low=0.0)
        check_number(owner, "dppo_ratio_cap", self.dppo_ratio_cap, low=1.0)
        for name in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
            check_number(owner, name, getattr(self, name), low=0.0)


@dataclass(frozen=True)
class ActFocusConfig:
    """ActFocus token weights (SPEC section 3).

    ``reasoning_weight`` is lambda, ``action_weight`` beta_a, ``redistribution`` gamma,
    ``energy_temperature`` tau and ``max_weight`` w_max.
    """

    reasoning_weight: float = 0.5
    action_weight: float = 1.0
    redistribution: float = 1.0
    energy_temperature: float = 1.0
    max_weight: float = 5.0
    uncertainty: str = "energy"
    scope: str = "sequence"
    preserve_total: bool = False
    source: str = "old"

    def __post_init__(self) -> None:
        owner = "ActFocusConfig"
        check_number(owner, "reasoning_weight", self.reasoning_weight, low=0.0)
        check_number(owner, "action_weight", self.action_weight, low=0.0)
        check_number(owner, "redistribution", self.redistribution)
        check_number(owner, "energy_temperature", self.energy_temperature, low=0.0, low_open=True)
        check_number(owner, "max_weight", self.max_weight, low=0.0, low_open=True)
        check_choice(owner, "uncertainty", self.uncertainty, UNCERTAINTIES)
        check_choice(owner, "scope", self.scope, SCOPES)
        if not isinstance(self.preserve_total, bool):
            raise TypeError(f"{owner}.preserve_total must be a bool, got {self.preserve_total!r}")
        check_choice(owner, "source", self.source, SOURCES)


class _TokenStatsFields(NamedTuple):
    logp: torch.Tensor
    energy: torch.Tensor
    entropy: torch.Tensor


class TokenStats(_TokenStatsFields):
    """Per-token statistics, fp32, shaped like the targets: ``logp = s[y] - lse``,
    ``energy = -T lse``, ``entropy = lse - sum(p s)`` with ``s`` the scaled, capped, tempered logits
    (SPEC sections 2 and 10). A tuple of these three (it unpacks as ``logp, energy, entropy``); with
    ``extra_stats=True`` also the fields, from the same pass (TRL's names; None otherwise):
    ``log_sum_sq_probs = log sum_v p_v^2``, ``mean_logits = mean_v s_v`` and bool ``is_top1`` (the
    target is the first index of ``max_v s_v``)."""

    def __new__(cls, logp: torch.Tensor, energy: torch.Tensor, entropy: torch.Tensor,
                log_sum_sq_probs: Optional[torch.Tensor] = None, mean_logits: Optional[torch.Tensor] = None,
                is_top1: Optional[torch.Tensor] = None) -> "TokenStats":
        stats = super().__new__(cls, logp, energy, entropy)
        stats.log_sum_sq_probs, stats.mean_logits, stats.is_top1 = log_sum_sq_probs, mean_logits, is_top1
        return stats

    def all_fields(self) -> tuple:
        """``(logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1)``."""
        return (*self, self.log_sum_sq_probs, self.mean_logits, self.is_top1)

    def map(self, fn) -> "TokenStats":
        """``fn`` applied to every field that is not None (e.g. a reshape, a detach)."""
        return TokenStats(*(None if x is None else fn(x) for x in self.all_fields()))


class LogitTransform(NamedTuple):
    """The logits' transform before the temperature (SPEC section 10): ``s = softcap tanh(logit_scale z
    / softcap) / T``, or ``logit_scale z / T`` when ``softcap`` is 0 (off; the public ``None``)."""

    logit_scale: float = 1.0
    softcap: float = 0.0

    @classmethod
    def checked(cls, owner: str, logit_scale: Any, softcap: Any) -> "LogitTransform":
        """``logit_scale`` finite and > 0, ``softcap`` None or finite and > 0; errors name ``owner.field``."""
        check_number(owner, "logit_scale", logit_scale, low=0.0, low_open=True)
        check_number(owner, "softcap", softcap, low=0.0, low_open=True, optional=True)
        return cls(float(logit_scale), float(softcap or 0.0))


@dataclass
class PolicyLossOutput:
    """Result of ``policy_loss``: the differentiable scalar ``loss`` and detached diagnostics.

    Per-token tensors are shaped like the targets; ``clipped`` is True where the clip (or dual
    clip) branch is active, so the token's policy-gradient term has zero gradient. Scalar metrics
    are 0-d tensors averaged over the loss mask (0 where the set they average over is empty).
    With the rollout correction (``PolicyLossConfig.rollout_is_level``): ``rollout_kl`` (mean of
    ``rollout_logp - old_logp`` over the mask) and ``rollout_filter_frac`` (the share of tokens, or of
    sequences, outside the band); None otherwise.
    """

    loss: torch.Tensor
    logp: torch.Tensor
    energy: torch.Tensor
    entropy: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor
    weights: torch.Tensor
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor
    entropy_mean: torch.Tensor
    energy_mean_action: torch.Tensor
    energy_mean_reasoning: torch.Tensor
    rollout_kl: Optional[torch.Tensor] = None
    rollout_filter_frac: Optional[torch.Tensor] = None
