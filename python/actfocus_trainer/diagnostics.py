"""Action Bottleneck diagnostics: where the policy-gradient signal lands, and whether it tracks
reward variance.

On ``prompts`` start states with ``group_size`` rollouts each, the on-policy loss
``policy_loss(logits, targets, None, A, loss_mask)`` with centred returns ``A_i = R_i - mean_g R``
(no std normalisation, so a prompt's signal scales with its reward spread) is differentiated
with respect to the logits; ``‖dz_t‖`` (the L2 norm of token t's logit gradient) is its signal.
Reported per token class (action = the action text in the answer, reasoning = the other generated
tokens):

- token share and signal share ``sum_class ‖dz‖ / sum_all ‖dz‖``, and the mean ``‖dz‖`` per token,
- Pearson correlation across prompts between the class's mean ``‖dz‖`` in a prompt's rollouts and
  the variance of that prompt's returns (NaN when either is constant),
- the same correlation for the signal per unit advantage (the loss with ``A = 1``, so
  ``‖dz_t‖ ∝ w_t ‖onehot(y_t) - p_t‖``): whether a class's uncertainty, not the advantage size
  the signal is scaled by, predicts the spread of outcomes.

The same is measured with ActFocus weights (``source="old"``) to show how they move the signal.
"""
from __future__ import annotations

import math

import torch

from actfocus_kernels import PolicyLossConfig, actfocus_weights, policy_loss, token_stats

from .masks import build_batch, policy_forward


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation of two equally long lists (NaN if either is constant)."""
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    var_x = sum((a - mean_x) ** 2 for a in x)
    var_y = sum((b - mean_y) ** 2 for b in y)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else float("nan")


def gradient_norms(policy, batch, advantages: torch.Tensor, context: str, weights=None,
                   backend: str = "auto") -> torch.Tensor:
    """``‖d loss / d z_t‖`` per token ``[B, L]`` of the on-policy token-mean loss."""
    with torch.no_grad():
        logits, _ = policy_forward(policy, batch, context)
    logits.requires_grad_(True)
    out = policy_loss(logits, batch.targets, None, advantages, batch.loss_mask, weights=weights,
                      action_mask=batch.action_mask, cfg=PolicyLossConfig(), backend=backend)
    out.loss.backward()
    return logits.grad.norm(dim=-1) * batch.loss_mask


def signal_report(norms: torch.Tensor, unit_norms: torch.Tensor, batch, groups: torch.Tensor,
                  reward_var: torch.Tensor) -> dict:
    """Shares, per-token means and correlations with reward variance for action/reasoning tokens."""
    mask, action = batch.loss_mask, batch.action_mask * batch.loss_mask
    report = {}
    for name, member in {"action": action, "reasoning": mask - action}.items():
        def per_prompt(values: torch.Tensor) -> list[float]:
            return [float((values * member)[groups == g].sum() / member[groups == g].sum().clamp(min=1))
                    for g in range(len(reward_var))]

        report[name] = {"token_share": float(member.sum() / mask.sum()),
                        "signal_share": float((norms * member).sum() / norms.sum().clamp(min=1e-30)),
                        "mean_norm": float((norms * member).sum() / member.sum().clamp(min=1)),
                        "corr_reward_var": pearson(per_prompt(norms), reward_var.tolist()),
                        "corr_unit_reward_var": pearson(per_prompt(unit_norms), reward_var.tolist())}
    return report


def diagnose(policy, tokenizer, collect_fn, seeds: list[int], group_size: int, context: str,
             actfocus_cfg, backend: str = "auto") -> dict:
    """Roll out ``group_size`` episodes from each seed and report the signal split (see module doc)
    without and with ActFocus weights; also the success rate and mean reward variance."""
    episodes = collect_fn(seeds, group_size)
    device = next(policy.parameters()).device
    batch = build_batch(episodes, tokenizer.pad_id).to(device)
    returns = torch.tensor([ep.total_return for ep in episodes], device=device)
    groups = torch.tensor([ep.group for ep in episodes], device=device)
    group_mean = torch.zeros(len(seeds), device=device).index_add_(0, groups, returns) / group_size
    advantages = returns - group_mean[groups]
    reward_var = torch.zeros(len(seeds), device=device).index_add_(0, groups, advantages ** 2) / group_size
    with torch.no_grad():
        logits, _ = policy_forward(policy, batch, context)
        stats = token_stats(logits, batch.targets, backend=backend)
    actfocus = actfocus_weights(stats, batch.loss_mask, batch.action_mask, actfocus_cfg, turn_ids=batch.turn_ids)
    report = {"episodes": len(episodes), "success": sum(ep.success for ep in episodes) / len(episodes),
              "prompts_with_reward_spread": int((reward_var > 0).sum())}
    for name, weights in (("vanilla", None), ("actfocus", actfocus)):
        norms = gradient_norms(policy, batch, advantages, context, weights, backend)
        unit_norms = gradient_norms(policy, batch, torch.ones_like(advantages), context, weights, backend)
        report[name] = signal_report(norms, unit_norms, batch, groups, reward_var)
    return report
