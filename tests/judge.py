"""The float64 judge: SPEC sections 2-4 written out naively and independently of the library
(per-sequence loops, ``-sum p log p`` for the entropy, autograd for the gradient), plus random
inputs that exercise both sides of the clip range."""
from __future__ import annotations

import math
from typing import Optional

import torch

from actfocus_kernels import ActFocusConfig, PolicyLossConfig
from actfocus_kernels.constants import RATIO_LOG_CLAMP, STD_EPS


def judge_scaled_logits(logits: torch.Tensor, temperature: float = 1.0, logit_scale: float = 1.0,
                        softcap: Optional[float] = None) -> torch.Tensor:
    """float64 ``s`` of SPEC 10, naively: ``softcap * tanh(logit_scale * z / softcap) / T`` (``-inf``
    logits stay ``-inf``), or ``logit_scale * z / T`` without cap; differentiable."""
    z = logits.double() * logit_scale
    if softcap:
        z = torch.where(logits == float("-inf"), z, softcap * torch.tanh(z / softcap))
    return z / temperature


def judge_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, ignore_index: int = -100,
                logit_scale: float = 1.0, softcap: Optional[float] = None):
    """float64 ``(logp, energy, entropy)`` of ``logits [..., V]`` (over ``judge_scaled_logits``); differentiable."""
    s = judge_scaled_logits(logits, temperature, logit_scale, softcap)
    log_probs = torch.log_softmax(s, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
    valid = targets != ignore_index
    picked = log_probs.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, picked, torch.zeros_like(picked))
    return logp, -temperature * torch.logsumexp(s, dim=-1), entropy


def judge_extra_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                      ignore_index: int = -100, logit_scale: float = 1.0, softcap: Optional[float] = None):
    """float64 ``(log_sum_sq_probs, mean_logits, is_top1, s)`` of SPEC 10, naively: ``log sum_v p_v^2``,
    ``mean_v s_v``, and whether the target is the first index of ``max_v s_v`` (False where ignored);
    ``s`` is returned for the tie check of ``is_top1``."""
    s = judge_scaled_logits(logits, temperature, logit_scale, softcap).detach()
    probs = torch.softmax(s, dim=-1)
    valid = targets != ignore_index
    is_top1 = valid & (torch.argmax(s, dim=-1) == torch.where(valid, targets, -1))
    return torch.log((probs * probs).sum(-1)), s.mean(-1), is_top1, s


def sequences(num_tokens_shape: tuple, cu_seqlens: Optional[torch.Tensor]) -> list:
    """Index lists of each sequence's tokens in the flattened token order."""
    if len(num_tokens_shape) == 2:
        batch, length = num_tokens_shape
        return [list(range(b * length, (b + 1) * length)) for b in range(batch)]
    if cu_seqlens is None:
        return [list(range(num_tokens_shape[0]))]
    bounds = cu_seqlens.tolist()
    return [list(range(bounds[i], bounds[i + 1])) for i in range(len(bounds) - 1)]


def _seq_counts(groups, m, cfg, skip_by_default: bool):
    if cfg.norm_seqs is not None:
        return cfg.norm_seqs
    skip = cfg.empty_seqs == "skip" if cfg.empty_seqs is not None else skip_by_default
    return max(sum(1 for g in groups if m[g].sum() > 0), 1) if skip else max(len(groups), 1)


def _aggregate(token, m, groups, targets, cfg):
    """SPEC section 4's aggregation table of the masked token values ``token`` (already ``m l``)."""
    if cfg.agg == "token-mean":
        return token.sum() / (cfg.norm_tokens if cfg.norm_tokens is not None else max(m.sum().item(), 1.0))
    if cfg.agg == "token-sum":
        return token.sum()
    if cfg.agg == "seq-mean-token-mean":
        per_seq = [token[g].sum() / m[g].sum() for g in groups if m[g].sum() > 0]
        return sum(per_seq, torch.zeros((), dtype=torch.float64)) / _seq_counts(groups, m, cfg, True)
    if cfg.agg == "seq-mean-token-sum":
        total = sum((token[g].sum() for g in groups), torch.zeros((), dtype=torch.float64))
        return total / _seq_counts(groups, m, cfg, False)
    longest = targets.shape[1] if targets.dim() == 2 else max(max(len(g) for g in groups), 1)
    norm_len = cfg.norm_len or longest
    return token.sum() / (_seq_counts(groups, m, cfg, False) * norm_len)


def _kl(logp, ref, kl_type):
    d = logp - ref
    low_var = torch.clamp(torch.exp(torch.clamp(ref - logp, -20, 20)) - torch.clamp(ref - logp, -20, 20) - 1, -10, 10)
    if kl_type in ("k1+", "abs+", "k3+"):  # the value of k1 / abs / verl's k3, the gradient of k2
        value = {"k1+": d, "abs+": d.abs(), "k3+": low_var}[kl_type].detach()
        return value + 0.5 * d ** 2 - (0.5 * d ** 2).detach()
    return {"k1": d, "k2": 0.5 * d ** 2, "k3": torch.exp(ref - logp) - (ref - logp) - 1, "abs": d.abs(),
            "low_var_kl": low_var}[kl_type]


def zero_of(x):
    return torch.zeros((), dtype=x.dtype)


def _policy_terms(cfg, logp, old, adv, m, mask, groups, generator):
    """Per-token policy losses (a list) and importance ratios, written per token and per sequence;
    for gmpo the per-sequence losses instead."""
    lo, hi = cfg.clip_low, cfg.clip_high
    n = logp.shape[0]
    token_ratio = torch.exp(torch.clamp(logp - old, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    seq_log_ratio = [None] * n
    for g in groups:
        value = sum((m[i] * (logp[i] - old[i]) for i in g), torch.zeros((), dtype=torch.float64))
        value = value / max(m[g].sum().item(), 1.0)
        for i in g:
            seq_log_ratio[i] = value

    def ppo_like(r, capped, i):
        a = adv[i]
        return torch.maximum(-a * capped, -a * torch.clamp(r, 1 - lo, 1 + hi))

    losses, ratios = [], []
    if cfg.policy == "gmpo":
        per_seq = []
        for g in groups:
            count = m[g].sum() + 1e-8
            total_lr, total_a = 0.0, 0.0
            for i in g:
                lr = torch.clamp(logp[i] - old[i], -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
                sgn = torch.sign(adv[i])
                total_lr = total_lr + m[i] * sgn * torch.minimum(sgn * lr, sgn * torch.clamp(lr, -lo, hi))
                total_a = total_a + m[i] * adv[i]
            seq_ratio = torch.exp(total_lr / count)
            per_seq.append((-(total_a / count) * seq_ratio, g, count, seq_ratio))
        return per_seq, None
    if cfg.policy == "clip_cov":
        mean_a = (m * adv).sum() / (m.sum() + 1e-8)
        mean_lp = (m * logp.detach()).sum() / (m.sum() + 1e-8)
        candidates = []
        for i in range(n):
            r = token_ratio[i]
            clipped = -adv[i] * torch.clamp(r, 1 - lo, 1 + hi) > -adv[i] * r
            cov = (adv[i] - mean_a) * (logp[i].detach() - mean_lp)
            if mask[i] and not clipped and cfg.clip_cov_lb < cov < cfg.clip_cov_ub:
                candidates.append(i)
        dropped = set()
        if candidates:
            order = torch.randperm(len(candidates), generator=generator)
            budget = max(int(cfg.clip_cov_ratio * m.sum().item()), 1)
            dropped = {candidates[int(j)] for j in order[:budget]}
    if cfg.policy == "kl_cov":
        valid = [i for i in range(n) if mask[i]]
        chosen = set()
        if valid:
            a_mean = adv[valid].mean()
            lp_mean = logp.detach()[valid].mean()
            cov = torch.stack([(adv[i] - a_mean) * (logp[i].detach() - lp_mean) for i in valid])
            k = max(1, int(len(valid) * cfg.kl_cov_ratio))
            chosen = {valid[int(j)] for j in torch.topk(cov, k).indices}
    if cfg.policy == "vespo":  # TRL's gamma weight of the summed sequence log-ratio, detached
        seq_sum = {}
        for g in groups:
            total = sum((m[i] * torch.clamp(logp[i].detach() - old[i], -20, 20) for i in g), zero_of(logp))
            for i in g:
                seq_sum[i] = torch.clamp(total, math.log(1e-8), 20.0)
    for i in range(n):
        r, a, lr = token_ratio[i], adv[i], logp[i] - old[i]
        if cfg.policy in ("ppo", "clip_cov"):
            capped = r if cfg.delta is None else torch.clamp(r, max=cfg.delta)
            loss = ppo_like(r, capped, i)
            if cfg.dual_clip is not None and a < 0:
                loss = torch.minimum(loss, -a * cfg.dual_clip)
            if cfg.policy == "clip_cov" and i in dropped:
                loss = loss * 0
        elif cfg.policy == "gspo":
            r = torch.exp(torch.clamp(seq_log_ratio[i], -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
            loss = ppo_like(r, r if cfg.delta is None else torch.clamp(r, max=cfg.delta), i)
        elif cfg.policy == "gspo_token":
            r = torch.exp(torch.clamp(logp[i] - logp[i].detach() + seq_log_ratio[i].detach(), max=10.0))
            loss = ppo_like(r, r, i)
        elif cfg.policy == "cispo":
            loss = -torch.clamp(r, max=1 + hi).detach() * a * logp[i]
        elif cfg.policy == "cispo_two_sided":
            loss = -torch.clamp(r, 1 - lo, 1 + hi).detach() * a * logp[i]
        elif cfg.policy == "sapo":
            tau = cfg.sapo_tau_pos if a > 0 else cfg.sapo_tau_neg
            loss = -torch.sigmoid(tau * (r - 1)) * 4 / tau * a
        elif cfg.policy == "gpg":
            loss = -a * logp[i]
        elif cfg.policy == "dro":
            loss = -(logp[i] * a - 0.5 * cfg.dro_beta * lr ** 2)
        elif cfg.policy == "kl_cov":
            loss = -a * r + (cfg.kl_cov_coef * lr.abs() if i in chosen else 0)
        elif cfg.policy == "vespo":
            k, lam = (cfg.vespo_k_pos, cfg.vespo_lambda_pos) if a >= 0 else (cfg.vespo_k_neg, cfg.vespo_lambda_neg)
            lam = max(lam, 1e-4)
            log_w = seq_sum[i]
            phi = torch.nan_to_num(torch.exp(lam + k * log_w - lam * torch.exp(log_w)), 0.0, 0.0, 0.0)
            r = torch.exp(log_w)
            loss = -phi * a * logp[i]
        elif cfg.policy in ("dppo_tv", "dppo_kl"):
            p, p_old = torch.exp(logp[i].detach()), torch.exp(old[i])
            if cfg.policy == "dppo_tv":
                keep = (p - p_old <= hi) if a > 0 else (p - p_old >= -lo)
            else:
                kl = p_old * (old[i] - logp[i].detach()) + (1 - p_old) * torch.log((1 - p_old + 1e-8) / (1 - p + 1e-8))
                keep = (kl <= hi or p <= p_old) if a > 0 else (kl <= lo or p >= p_old)
            loss = -a * torch.clamp(r, max=cfg.dppo_ratio_cap).detach() * logp[i] * float(keep)  # verl: x * 0
        losses.append(loss)
        ratios.append(r)
    return losses, ratios


def judge_policy_loss(
    logits, targets, old_logp, advantages, loss_mask, *, weights=None, ref_logp=None, cu_seqlens=None,
    cfg: PolicyLossConfig = PolicyLossConfig(), generator=None, logit_scale: float = 1.0, softcap=None,
):
    """float64 ``(loss, dloss/dlogits, per-token dict)`` straight from SPEC sections 4 and 4.1 (the
    peers' formulas, token by token and sequence by sequence)."""
    z = logits.detach().double().requires_grad_(True)
    T = cfg.temperature
    logp, energy, entropy = judge_stats(z, targets, T, cfg.ignore_index, logit_scale, softcap)
    logp_f, entropy_f = logp.reshape(-1), entropy.reshape(-1)
    groups = sequences(tuple(targets.shape), cu_seqlens)
    adv = advantages.double()
    if adv.shape != targets.shape:  # one per sequence
        adv = torch.cat([adv[i].expand(len(g)) for i, g in enumerate(groups)])
    adv = adv.reshape(-1)
    # the loss mask is a multiplier m (SPEC 4): active iff m > 0, counting m in every sum
    m = torch.where(targets.reshape(-1) != cfg.ignore_index, loss_mask.reshape(-1).double(), 0.0)
    mask = m > 0
    zero = torch.zeros((), dtype=torch.float64)
    logp_m = torch.where(mask, logp_f, zero)  # nothing off the mask reaches the loss
    adv = torch.where(mask, adv, zero)
    old = logp_m.detach() if old_logp is None else torch.where(mask, old_logp.double().reshape(-1), zero)
    w = torch.ones_like(logp_f) if weights is None else torch.where(mask, weights.double().reshape(-1), zero)
    losses, ratios = _policy_terms(cfg, logp_m, old, adv, m, mask, groups, generator)
    # TRL's coef_1: the sequence ratio at its sequence level (gspo), else the token ratio
    token_ratio = torch.exp(torch.clamp(logp_m - old, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    if cfg.policy == "gmpo":
        seq_w = [torch.exp(sum((m[i] * torch.log(w[i] + 1e-10) for i in g), zero) / count) if weights is not None
                 else 1.0 for _, g, count, _ in losses]
        rows = cfg.norm_seqs if cfg.norm_seqs is not None else max(len(groups), 1)
        loss = sum((value * sw for (value, _, _, _), sw in zip(losses, seq_w)), zero) / rows
        ratio = torch.cat([seq_ratio.expand(len(g)) for _, g, _, seq_ratio in losses])
        token = torch.zeros_like(logp_f)
    else:
        empty = torch.zeros(0, dtype=torch.float64)
        ratio = torch.stack(ratios) if ratios else empty
        token = w * (torch.stack(losses) if losses else empty)
        loss = zero
    if cfg.kl_coef > 0:
        ref = torch.where(mask, ref_logp.double().reshape(-1), zero)
        kl = _kl(logp_m, ref, cfg.kl_type)
        if cfg.kl_bias_correction:
            kl = kl * (ratio if cfg.policy == "gspo" else token_ratio)
        token = token + cfg.kl_coef * kl
    if cfg.entropy_coef != 0 and cfg.entropy_agg is None:
        token = token - cfg.entropy_coef * entropy_f
    token = torch.where(mask, m * token, torch.zeros_like(token))  # m * l, exactly 0 off the mask
    loss = loss + _aggregate(token, m, groups, targets, cfg)
    if cfg.entropy_coef != 0 and cfg.entropy_agg == "token-mean":
        bonus = torch.where(mask, m * entropy_f, zero).sum() / max(m.sum().item(), 1.0)
        loss = loss - cfg.entropy_coef * bonus
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, z, allow_unused=True, materialize_grads=True)
    else:  # no active token reaches the loss (all masked, or no tokens)
        grad = torch.zeros_like(z)
    shape = targets.shape
    per_token = {"logp": logp.detach(), "energy": energy.detach(), "entropy": entropy.detach(),
                 "ratio": ratio.detach().view(shape)}
    return loss.detach(), grad, per_token


def judge_weights(uncertainty, loss_mask, action_mask, cfg: ActFocusConfig, scope_of_token: list) -> torch.Tensor:
    """float64 ActFocus weights (SPEC section 3) by a loop over scopes; ``scope_of_token`` gives a
    hashable scope key per flattened token."""
    u = uncertainty.double().reshape(-1)
    m = loss_mask.reshape(-1).bool()
    a = action_mask.reshape(-1).bool()
    w = torch.zeros_like(u)
    for key in dict.fromkeys(scope_of_token):
        idx = [i for i, k in enumerate(scope_of_token) if k == key]
        act = [i for i in idx if m[i] and a[i]]
        rea = [i for i in idx if m[i] and not a[i]]
        for i in rea:
            w[i] = cfg.reasoning_weight
        if act:
            ua = u[act]
            e = (ua - ua.mean()) / (ua.std(unbiased=False) + STD_EPS) if len(act) >= 2 else torch.zeros_like(ua)
            q = torch.softmax(e / cfg.energy_temperature, 0)
            for j, i in enumerate(act):
                w[i] = min(cfg.max_weight, cfg.action_weight * (1 + cfg.redistribution * (len(act) * q[j].item() - 1)))
        if cfg.preserve_total:
            total = w[idx].sum()
            if total != 0:
                w[idx] = w[idx] * (len(act) + len(rea)) / total
    return w.view(uncertainty.shape)


def make_batch(batch: int, length: int, vocab: int, dtype=torch.float32, device="cpu", seed: int = 0,
               per_seq_advantages: bool = False):
    """Random logits and per-token inputs; ``old_logp`` is the true logp plus noise so the ratios
    fall on both sides of the clip range, advantages have both signs, some tokens are masked."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=g) * 2).to(dtype)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    logp, _, _ = judge_stats(logits, targets)
    old_logp = (logp + torch.empty(batch, length, dtype=torch.float64).uniform_(-0.6, 0.6, generator=g)).float()
    ref_logp = (logp + 0.3 * torch.randn(batch, length, generator=g, dtype=torch.float64)).float()
    advantages = torch.randn(batch if per_seq_advantages else (batch, length), generator=g)
    loss_mask = (torch.rand(batch, length, generator=g) > 0.25).to(torch.float32)
    loss_mask[0, 0] = 0
    loss_mask[-1, -1] = 1
    action_mask = (torch.rand(batch, length, generator=g) > 0.6).to(torch.float32)
    turn_ids = torch.arange(length).repeat(batch, 1) * 3 // length
    out = dict(logits=logits, targets=targets, old_logp=old_logp, ref_logp=ref_logp, advantages=advantages,
               loss_mask=loss_mask, action_mask=action_mask, turn_ids=turn_ids)
    return {k: v.to(device) for k, v in out.items()}
