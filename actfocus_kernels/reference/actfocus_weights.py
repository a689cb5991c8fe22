"""ActFocus token weights (SPEC section 3), vectorised over scopes with scatter reductions.

In each scope S (a sequence, or a turn of a sequence) with action tokens ``A = {m=1, a=1}`` and
reasoning tokens ``R = {m=1, a=0}``:

    e_t = (u_t - mean_A u) / (std_A u + 1e-6)    on A (population std; 0 when |A| < 2)
    q_t = softmax_A(e_t / tau)
    w_t = lambda on R;  min(w_max, beta_a (1 + gamma (|A| q_t - 1))) on A;  0 where m = 0
    preserve_total: w <- w (|A| + |R|) / sum_S w   (a scope with sum_S w = 0 keeps zeros)
"""
from __future__ import annotations

import torch

from ..constants import STD_EPS


def _per_scope(values: torch.Tensor, scope_ids: torch.Tensor, num_scopes: int) -> torch.Tensor:
    return torch.zeros(num_scopes, dtype=values.dtype, device=values.device).index_add_(0, scope_ids, values)


def scope_weights(
    uncertainty: torch.Tensor,
    loss_mask: torch.Tensor,
    action_mask: torch.Tensor,
    scope_ids: torch.Tensor,
    reasoning_weight: float,
    action_weight: float,
    redistribution: float,
    energy_temperature: float,
    max_weight: float,
    preserve_total: bool,
) -> torch.Tensor:
    """Flat ``[N]`` inputs (``scope_ids`` int64 in ``[0, num_scopes)``) -> fp32 weights ``[N]``."""
    num_scopes = int(scope_ids.max()) + 1
    mask = loss_mask.bool()
    is_action = mask & action_mask.bool()
    is_reasoning = mask & ~action_mask.bool()
    action = is_action.to(torch.float32)
    u = torch.where(is_action, uncertainty.to(torch.float32), 0.0)

    count = _per_scope(action, scope_ids, num_scopes)
    count_t = count[scope_ids]
    mean_t = (_per_scope(u, scope_ids, num_scopes) / count.clamp(min=1))[scope_ids]
    centred = torch.where(is_action, u - mean_t, 0.0)
    std_t = torch.sqrt(_per_scope(centred * centred, scope_ids, num_scopes) / count.clamp(min=1))[scope_ids]
    standardised = torch.where(count_t >= 2, centred / (std_t + STD_EPS), 0.0)

    score = torch.where(is_action, standardised / energy_temperature, float("-inf"))
    scope_max = torch.full((num_scopes,), float("-inf"), device=u.device).scatter_reduce(
        0, scope_ids, score, reduce="amax"
    )
    exp_score = torch.where(is_action, torch.exp(score - scope_max[scope_ids]), 0.0)
    q = exp_score / _per_scope(exp_score, scope_ids, num_scopes).clamp(min=torch.finfo(torch.float32).tiny)[scope_ids]

    action_w = torch.clamp(action_weight * (1.0 + redistribution * (count_t * q - 1.0)), max=max_weight)
    weights = torch.where(is_action, action_w, torch.where(is_reasoning, reasoning_weight, 0.0))
    if preserve_total:
        total = _per_scope(weights, scope_ids, num_scopes)[scope_ids]
        tokens = _per_scope(mask.to(torch.float32), scope_ids, num_scopes)[scope_ids]
        weights = torch.where(total != 0, weights * (tokens / torch.where(total != 0, total, 1.0)), weights)
    return weights
