"""Policy-loss variants (SPEC section 4.1) as scalar functions on flat ``[N]`` tensors.

The vocabulary-sized work is the same for every variant: row statistics (``logp``, ``entropy``),
then ``dz = g/T [c (onehot - p) + h p (s - mu)]``. A variant only defines per-token scalars, here
written once in torch on the differentiable ``logp`` / ``entropy`` of the rows (float64):

    loss = sum_t scale_t (w_t L_pg,t + kl_coef KL_t - entropy_coef H_t)      (scale: ``loss_scale``)

with ``r = exp(clamp(logp - old_logp, -20, 20))``, ``A`` the advantage, ``m`` the mask multiplier,
``sg`` stop-gradient and, per variant (``PolicyLossConfig.policy``; the peers' code is the contract):

- ``ppo``: ``max(-A min(r, delta), -A clip(r, 1-lo, 1+hi))``, dual clip ``min(., -A c)`` where ``A < 0``;
- ``gspo`` (TRL sequence-level IS, OpenRLHF gspo): the same with ``r`` replaced by
  ``s_i = exp(sum_t m lr / max(sum_t m, 1))``, differentiable through every token of sequence i (dual clip too);
- ``gspo_token`` (verl gspo): ``s_it = exp(min(logp - sg(logp) + sg(log s_i), 10))``, clipped per token;
- ``cispo`` (TRL): ``-sg(min(r, 1+hi)) A logp``; ``cispo_two_sided`` (verl): ``-sg(clip(r, 1-lo, 1+hi)) A logp``;
- ``sapo``: ``-(4/tau) sigmoid(tau (r - 1)) A``, ``tau = tau_pos`` where ``A > 0`` else ``tau_neg``;
- ``gpg``: ``-A logp``; ``dro`` (verl): ``-(A logp - beta/2 (logp - old_logp)^2)``;
- ``gmpo`` (verl geo_mean): per sequence ``-A_i exp(sum_t m lr'_t / (sum_t m + 1e-8))`` with the
  sign-aware clipped log-ratio ``lr' = sgn(A) min(sgn(A) l, sgn(A) clip(l, -lo, hi))`` of
  ``l = clamp(lr, -20, 20)`` and ``A_i`` the masked mean advantage, averaged over the rows
  (``norm_seqs`` when given); weights enter as their per-sequence geometric mean, so they must be >= 0;
- ``clip_cov`` (verl): ``ppo`` without dual clip, and a random ``clip_cov_ratio`` share of the tokens whose
  ``cov = (A - mean A)(logp - mean logp)`` lies in ``(lb, ub)`` (and are not clipped) has its term
  multiplied by 0 (as verl does: a non-finite term stays non-finite);
- ``kl_cov`` (verl): ``-A r``, plus ``kl_cov_coef |logp - old_logp|`` on the top ``kl_cov_ratio`` share of
  tokens by ``cov``;
- ``dppo_tv`` / ``dppo_kl`` (verl): ``-A sg(min(r, dppo_ratio_cap)) logp`` on the tokens whose probability
  moved less than the bound (``p - p_old`` within ``[-lo, hi]``, or the binary KL of ``p_old`` to ``p``
  within ``lo``/``hi`` unless ``p`` moved the advantage's way), times 0 elsewhere (as verl does: a
  non-finite token stays non-finite);
- ``vespo`` (TRL): ``-sg(phi) A logp`` with the gamma weight ``phi = exp(lam + k log w - lam w)`` of the
  sequence ratio ``w = exp(clamp(sum_t m clamp(lr, +-20), log 1e-8, 20))``, ``(k, lam)`` by the sign of A
  (``vespo_phi``); like TRL, a non-finite ``phi`` is 0, so a NaN log-ratio zeroes its sequence's term.

KL (``kl_type``, ``d = logp - ref``): k1 ``d``, k2 ``d^2/2``, k3 ``e^-d + d - 1``, abs ``|d|``,
low_var_kl (verl's k3) ``clamp(e^x - x - 1, -10, 10)`` with ``x = clamp(-d, -20, 20)``, and verl's
straight-through ``k1+``/``abs+``/``k3+`` (the value of k1 / abs / low_var_kl, the gradient of k2).
``kl_bias_correction`` multiplies the KL by TRL's differentiable importance weight ``coef_1``: the
sequence ratio ``s_i`` for ``gspo`` (TRL's sequence level), the token ratio ``r`` for every other
policy, whatever ratio its policy term uses (TRL's vespo does the same).
The entropy term is aggregated like the policy term, or (``entropy_agg="token-mean"``, TRL) as
``sum m H / max(sum m, 1)``.

Which variants run the single-pass fused kernel (``is_fused``): ``ppo`` with k1/k2/k3 KL, no
``delta``, no bias correction and the entropy aggregated like the policy term. Every other
configuration is two-pass: differentiable statistics (one read of the logits), these scalar
functions, then autograd's ``row_gradient`` pass (one read + one write).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .aggregation import loss_scale
from .config import PolicyLossConfig
from .constants import RATIO_LOG_CLAMP
from .layout import TokenLayout

FUSED_KL_TYPES = ("k1", "k2", "k3")
GSPO_TOKEN_LOG_CLAMP = 10.0  # verl gspo: the token-level sequence log-ratio is clamped at max 10
GMPO_EPS = 1e-8  # verl geo_mean: sum_t m + 1e-8
GMPO_WEIGHT_EPS = 1e-10  # verl geo_mean: log(w + 1e-10)
VERL_MEAN_EPS = 1e-8  # verl masked_mean: sum / (sum m + 1e-8)
VESPO_LOG_MIN = math.log(1e-8)  # TRL vespo: the sequence log-ratio is clamped to [log 1e-8, 20]
VESPO_LAMBDA_MIN = 1e-4  # TRL vespo: lambda.clamp(min=1e-4)
DPPO_EPS = 1e-8  # verl dppo_kl: log((1 - p_old + 1e-8) / (1 - p + 1e-8))


def is_fused(cfg: PolicyLossConfig) -> bool:
    """Whether the single-pass fused kernel computes this configuration (else: two passes)."""
    return (cfg.policy == "ppo" and cfg.delta is None and cfg.kl_type in FUSED_KL_TYPES
            and not cfg.kl_bias_correction and cfg.entropy_agg is None)


@dataclass(frozen=True)
class TokenTerms:
    """A policy objective's inputs on rows, flat ``[N]``: the current ``logp`` and ``entropy``
    (differentiable), the detached ``old_logp`` (None: on-policy), ``advantages``, ``ref_logp``,
    ``weights`` (``weighted``: given by the caller or ActFocus, not the default ones), the mask
    multiplier ``m`` (0 off the mask) and the rows' sequence structure."""

    logp: Tensor
    entropy: Tensor
    old_logp: Optional[Tensor]
    advantages: Tensor
    ref_logp: Optional[Tensor]
    weights: Tensor
    weighted: bool
    multiplier: Tensor
    rows: TokenLayout


class PolicyTerms(NamedTuple):
    """A variant's policy term: ``loss`` per token ``[N]`` (weighted and aggregated by the caller),
    or the aggregated, weighted scalar when ``aggregated``; the ``importance`` ratio (the ``ratio``
    output); ``clipped`` tokens, those whose term a clip or selection rule changed; ``kl_ratio`` the
    differentiable ratio the bias-corrected KL multiplies (TRL's ``coef_1``); ``second_rule``, the
    clipped tokens a variant's second rule changed rather than its ratio clip (ppo's dual clip,
    clip_cov's covariance selection; None: the variant has none)."""

    loss: Tensor
    importance: Tensor
    clipped: Tensor
    kl_ratio: Tensor
    aggregated: bool = False
    second_rule: Optional[Tensor] = None


class Objective(NamedTuple):
    """``loss`` (fp32 scalar, differentiable) and the detached per-token ``ratio`` (1 off the mask),
    ``clipped`` and ``second_rule`` (``PolicyTerms``; False off the mask, None where the variant has
    no second rule)."""

    loss: Tensor
    ratio: Tensor
    clipped: Tensor
    second_rule: Optional[Tensor] = None


@dataclass(frozen=True)
class _Context:
    """Sanitised float64 inputs (0 off the mask, so nothing off it can reach a gradient)."""

    logp: Tensor
    old_logp: Tensor
    log_ratio: Tensor
    advantages: Tensor
    weights: Tensor
    weighted: bool
    m: Tensor
    mask: Tensor
    rows: TokenLayout
    cfg: PolicyLossConfig
    generator: Optional[torch.Generator]

    def seq_sum(self, x: Tensor) -> Tensor:
        """``[S]`` sums over each sequence's tokens (differentiable)."""
        zeros = torch.zeros(self.rows.num_seqs, dtype=x.dtype, device=x.device)
        return zeros.index_add(0, self.rows.seq_ids, x)

    def seq_mean_log_ratio(self) -> Tensor:
        """``[S]`` ``sum_t m lr / max(sum_t m, 1)`` (TRL and verl's sequence log-ratio)."""
        return self.seq_sum(self.m * self.log_ratio) / self.seq_sum(self.m).clamp(min=1.0)

    def masked_mean(self, x: Tensor) -> Tensor:
        """verl's ``masked_mean``: ``sum m x / (sum m + 1e-8)``."""
        return (self.m * x).sum() / (self.m.sum() + VERL_MEAN_EPS)


def _token_ratio(ctx: _Context) -> Tensor:
    return torch.exp(torch.clamp(ctx.log_ratio, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))


def _clipped_surrogate(ctx: _Context, ratio: Tensor, capped: Tensor) -> tuple[Tensor, Tensor]:
    """``max(-A capped, -A clip(ratio, 1-lo, 1+hi))`` and where the clip branch is taken."""
    advantages, cfg = ctx.advantages, ctx.cfg
    unclipped = -advantages * capped
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    clipped = (clipped_loss > unclipped).detach()
    return torch.where(clipped, clipped_loss, unclipped), clipped


def _capped(ratio: Tensor, cfg: PolicyLossConfig) -> tuple[Tensor, Tensor]:
    """TRL's ``delta``: ``min(ratio, delta)`` and where it caps."""
    if cfg.delta is None:
        return ratio, torch.zeros_like(ratio, dtype=torch.bool)
    return torch.clamp(ratio, max=cfg.delta), (ratio > cfg.delta).detach()


def _clipped_ratio_terms(ctx: _Context, ratio: Tensor) -> PolicyTerms:
    """The clipped surrogate of ``ratio`` (``delta`` cap included), then the dual clip ``min(., -A c)``
    where ``A < 0`` when ``dual_clip`` is set (its tokens are the ``second_rule``)."""
    capped, over_delta = _capped(ratio, ctx.cfg)
    loss, clipped = _clipped_surrogate(ctx, ratio, capped)
    if ctx.cfg.dual_clip is None:
        return PolicyTerms(loss, ratio, clipped | over_delta, ratio)
    dual = -ctx.advantages * ctx.cfg.dual_clip
    dual_clipped = ((ctx.advantages < 0) & (loss > dual)).detach()
    return PolicyTerms(torch.where(dual_clipped, dual, loss), ratio, clipped | dual_clipped | over_delta, ratio,
                       second_rule=dual_clipped)


def _ppo(ctx: _Context) -> PolicyTerms:
    return _clipped_ratio_terms(ctx, _token_ratio(ctx))


def _gspo(ctx: _Context) -> PolicyTerms:
    """OpenRLHF's gspo takes ppo's dual clip too."""
    log_seq = torch.clamp(ctx.seq_mean_log_ratio(), -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    return _clipped_ratio_terms(ctx, torch.exp(log_seq)[ctx.rows.seq_ids])


def _gspo_token(ctx: _Context) -> PolicyTerms:
    log_seq = ctx.seq_mean_log_ratio().detach()[ctx.rows.seq_ids]
    ratio = torch.exp(torch.clamp(ctx.logp - ctx.logp.detach() + log_seq, max=GSPO_TOKEN_LOG_CLAMP))
    loss, clipped = _clipped_surrogate(ctx, ratio, ratio)
    return PolicyTerms(loss, ratio, clipped, _token_ratio(ctx))


def _cispo(ctx: _Context) -> PolicyTerms:
    ratio = _token_ratio(ctx)
    cfg = ctx.cfg
    if cfg.policy == "cispo":
        weight = torch.clamp(ratio, max=1.0 + cfg.clip_high).detach()
    else:
        weight = torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high).detach()
    return PolicyTerms(-weight * ctx.advantages * ctx.logp, ratio, (ratio != weight).detach(), ratio)


def _sapo(ctx: _Context) -> PolicyTerms:
    ratio = _token_ratio(ctx)
    tau = torch.where(ctx.advantages > 0, ctx.cfg.sapo_tau_pos, ctx.cfg.sapo_tau_neg)
    loss = -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * ctx.advantages
    return PolicyTerms(loss, ratio, torch.zeros_like(ctx.mask), ratio)


def _gpg(ctx: _Context) -> PolicyTerms:
    ratio = _token_ratio(ctx)
    return PolicyTerms(-ctx.advantages * ctx.logp, ratio, torch.zeros_like(ctx.mask), ratio)


def _dro(ctx: _Context) -> PolicyTerms:
    ratio = _token_ratio(ctx)
    loss = -(ctx.logp * ctx.advantages - 0.5 * ctx.cfg.dro_beta * ctx.log_ratio.square())
    return PolicyTerms(loss, ratio, torch.zeros_like(ctx.mask), ratio)


def _check_gmpo_weights(ctx: _Context) -> None:
    """gmpo takes the geometric mean of the weights: a negative active weight has none (verl: NaN)."""
    negative = ctx.mask & (ctx.weights < 0)
    if bool(negative.any()):
        position = int(negative.nonzero()[0, 0])
        raise ValueError(f"weights must be >= 0 with policy='gmpo' (the geometric mean of each sequence's "
                         f"weights), got {float(ctx.weights[position])} at flat token {position}")


def _gmpo(ctx: _Context) -> PolicyTerms:
    cfg, m = ctx.cfg, ctx.m
    sign = torch.sign(ctx.advantages)
    bounded = torch.clamp(ctx.log_ratio, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    clamped = torch.clamp(bounded, -cfg.clip_low, cfg.clip_high)
    log_ratio = sign * torch.minimum(sign * bounded, sign * clamped)
    count = ctx.seq_sum(m) + GMPO_EPS
    seq_ratio = torch.exp(ctx.seq_sum(log_ratio * m) / count)
    seq_loss = -(ctx.seq_sum(ctx.advantages * m) / count) * seq_ratio
    if ctx.weighted:  # verl: the geometric mean of the token weights per sequence
        _check_gmpo_weights(ctx)
        seq_loss = seq_loss * torch.exp(ctx.seq_sum(torch.log(ctx.weights + GMPO_WEIGHT_EPS) * m) / count)
    rows = cfg.norm_seqs if cfg.norm_seqs is not None else max(ctx.rows.num_seqs, 1)
    return PolicyTerms(seq_loss.sum() / rows, seq_ratio[ctx.rows.seq_ids], (bounded != clamped).detach(),
                       _token_ratio(ctx), aggregated=True)


def _clip_cov(ctx: _Context) -> PolicyTerms:
    cfg, mask = ctx.cfg, ctx.mask
    ratio = _token_ratio(ctx)
    loss, clipped = _clipped_surrogate(ctx, ratio, ratio)
    logp = ctx.logp.detach()
    cov = (ctx.advantages - ctx.masked_mean(ctx.advantages)) * (logp - ctx.masked_mean(logp))
    candidates = ((cov < cfg.clip_cov_ub) & (cov > cfg.clip_cov_lb) & mask & ~clipped).nonzero().squeeze(1)
    keep = torch.ones_like(mask)
    if candidates.numel() > 0:  # verl: torch.randperm on the default (CPU) generator
        device = ctx.generator.device if ctx.generator is not None else torch.device("cpu")
        order = torch.randperm(candidates.numel(), generator=ctx.generator, device=device).to(mask.device)
        budget = max(int(cfg.clip_cov_ratio * float(ctx.m.sum())), 1)
        keep[candidates[order[:budget]]] = False
    return PolicyTerms(loss * keep.to(loss.dtype), ratio, clipped | ~keep, ratio, second_rule=~keep)


def _kl_cov(ctx: _Context) -> PolicyTerms:
    cfg, mask = ctx.cfg, ctx.mask
    ratio = _token_ratio(ctx)
    loss = -ctx.advantages * ratio
    count = mask.sum()
    logp = ctx.logp.detach()

    def valid_mean(x: Tensor) -> Tensor:  # verl: a plain mean over the tokens with m > 0
        return torch.where(mask, x, 0.0).sum() / count.clamp(min=1)

    cov = torch.where(mask, (ctx.advantages - valid_mean(ctx.advantages)) * (logp - valid_mean(logp)), -torch.inf)
    # the top k = max(1, floor(count * ratio)) tokens by cov, as a rank test (no data-dependent shapes)
    order = torch.argsort(cov, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    top = torch.floor(count.to(torch.float64) * cfg.kl_cov_ratio).clamp(min=1)
    selected = (rank < top) & mask
    penalised = loss + cfg.kl_cov_coef * ctx.log_ratio.abs()
    return PolicyTerms(torch.where(selected, penalised, loss), ratio, selected, ratio)


def _dppo(ctx: _Context) -> PolicyTerms:
    cfg, advantages = ctx.cfg, ctx.advantages
    ratio = _token_ratio(ctx)
    old_logp = ctx.old_logp.detach()
    prob, old_prob = torch.exp(ctx.logp.detach()), torch.exp(old_logp)
    if cfg.policy == "dppo_tv":
        valid = torch.where(advantages > 0, prob - old_prob <= cfg.clip_high, prob - old_prob >= -cfg.clip_low)
    else:
        binary_kl = (old_prob * (old_logp - ctx.logp.detach())
                     + (1 - old_prob) * torch.log((1.0 - old_prob + DPPO_EPS) / (1.0 - prob + DPPO_EPS)))
        valid = torch.where(advantages > 0, (binary_kl <= cfg.clip_high) | (prob <= old_prob),
                            (binary_kl <= cfg.clip_low) | (prob >= old_prob))
    truncated = torch.clamp(ratio, max=cfg.dppo_ratio_cap).detach()
    loss = -advantages * truncated * ctx.logp * valid.to(ratio.dtype)
    return PolicyTerms(loss, ratio, ~valid, ratio)


def vespo_phi(log_w: Tensor, advantages: Tensor, cfg: PolicyLossConfig) -> Tensor:
    """VESPO's gamma weight (TRL ``GRPOTrainer.get_gamma_weights``), elementwise and detached:

        phi = exp(lam + k l - lam e^l),   l = clamp(log_w, log 1e-8, 20)

    i.e. ``phi(w) = e^lam w^k e^(-lam w)`` (``phi(1) = 1``) of the sequence ratio ``w = e^l``, with
    ``(k, lam) = (vespo_k_pos, vespo_lambda_pos)`` where ``advantages >= 0``, else the ``_neg`` pair,
    ``lam`` clamped to ``>= 1e-4``; as TRL does, a non-finite ``phi`` (NaN included) is 0.
    ``log_w``: the summed masked token log-ratio of each sequence, broadcast against ``advantages``."""
    if not isinstance(cfg, PolicyLossConfig):
        raise TypeError(f"cfg must be a PolicyLossConfig, got {type(cfg).__name__}")
    for name, value in (("log_w", log_w), ("advantages", advantages)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor, got {value!r:.80}")
    log_w = torch.clamp(log_w.detach(), VESPO_LOG_MIN, RATIO_LOG_CLAMP)
    nonneg = advantages.detach() >= 0
    k = torch.where(nonneg, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam = torch.where(nonneg, cfg.vespo_lambda_pos, cfg.vespo_lambda_neg).clamp(min=VESPO_LAMBDA_MIN)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _vespo(ctx: _Context) -> PolicyTerms:
    log_ratio = torch.clamp(ctx.log_ratio.detach(), -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    log_w = torch.clamp(ctx.seq_sum(ctx.m * log_ratio), VESPO_LOG_MIN, RATIO_LOG_CLAMP)[ctx.rows.seq_ids]
    phi = vespo_phi(log_w, ctx.advantages, ctx.cfg)
    return PolicyTerms(-phi * ctx.advantages * ctx.logp, torch.exp(log_w), torch.zeros_like(ctx.mask),
                       _token_ratio(ctx))


POLICIES: dict[str, Callable[[_Context], PolicyTerms]] = {
    "ppo": _ppo, "gspo": _gspo, "gspo_token": _gspo_token, "cispo": _cispo, "cispo_two_sided": _cispo,
    "sapo": _sapo, "gpg": _gpg, "dro": _dro, "gmpo": _gmpo, "clip_cov": _clip_cov, "kl_cov": _kl_cov,
    "dppo_tv": _dppo, "dppo_kl": _dppo, "vespo": _vespo,
}


def kl_term(logp: Tensor, ref_logp: Tensor, kl_type: str) -> Tensor:
    """The per-token KL estimate ``kl_type`` of ``d = logp - ref_logp`` (see the module docstring)."""
    d = logp - ref_logp
    if kl_type == "k1":
        return d
    if kl_type == "k2":
        return 0.5 * d.square()
    if kl_type == "k3":
        return torch.exp(-d) + d - 1.0
    if kl_type == "abs":
        return d.abs()
    x = torch.clamp(-d, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    low_var = torch.clamp(torch.exp(x) - x - 1.0, -10.0, 10.0)
    if kl_type == "low_var_kl":
        return low_var
    value = {"k1+": d, "abs+": d.abs(), "k3+": low_var}[kl_type]  # straight through: the gradient of k2
    through = 0.5 * d.square()
    return through - through.detach() + value.detach()


def objective(terms: TokenTerms, cfg: PolicyLossConfig, generator: Optional[torch.Generator] = None) -> Objective:
    """The loss of ``cfg`` on the flat per-token ``terms`` (float64 inside, fp32 out)."""
    m32 = terms.multiplier
    mask = m32 > 0

    def on_mask(x: Tensor) -> Tensor:
        return torch.where(mask, x.to(torch.float64), 0.0)

    logp = on_mask(terms.logp)
    old = logp.detach() if terms.old_logp is None else on_mask(terms.old_logp)
    ctx = _Context(logp=logp, old_logp=old, log_ratio=logp - old, advantages=on_mask(terms.advantages),
                   weights=on_mask(terms.weights), weighted=terms.weighted, m=on_mask(m32), mask=mask,
                   rows=terms.rows, cfg=cfg, generator=generator)
    policy = POLICIES[cfg.policy](ctx)
    scale = loss_scale(m32, terms.rows, cfg).to(torch.float64)
    loss = policy.loss if policy.aggregated else (scale * ctx.weights * policy.loss).sum()
    if cfg.kl_coef > 0:
        kl = kl_term(logp, on_mask(terms.ref_logp), cfg.kl_type)
        if cfg.kl_bias_correction:
            kl = kl * policy.kl_ratio
        loss = loss + cfg.kl_coef * (scale * kl).sum()
    if cfg.entropy_coef != 0:
        entropy = on_mask(terms.entropy)
        if cfg.entropy_agg == "token-mean":
            bonus = (ctx.m * entropy).sum() / ctx.m.sum().clamp(min=1.0)
        else:
            bonus = (scale * entropy).sum()
        loss = loss - cfg.entropy_coef * bonus
    ratio = torch.where(mask, policy.importance.detach().to(torch.float32), 1.0)
    second_rule = None if policy.second_rule is None else policy.second_rule & mask
    return Objective(loss.to(torch.float32), ratio, policy.clipped & mask, second_rule)
