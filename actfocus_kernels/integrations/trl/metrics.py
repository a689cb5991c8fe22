"""The metrics the TRL drop-in logs: stock TRL's for the covered options, computed from the loss's
detached outputs (no variant formula is re-derived here: vespo's weight is ``variants.vespo_phi``),
and, with ActFocus on, the energies and weight statistics. Each appends to ``trainer._metrics[mode]``
a mean over processes, as TRL does."""
from __future__ import annotations

import functools

import torch
from torch import Tensor
from trl import GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from ...config import PolicyLossOutput
from ...variants import vespo_phi
from .options import PPO_LOSS_TYPES, LossPlan, entropy_bonus_on


def global_masked_mean(trainer: GRPOTrainer, x: Tensor, mask: Tensor) -> float:
    """TRL's ``global_masked_mean`` over every process: ``sum m x / sum m``, or the mean over the
    rows of a per-sequence ``x [B, 1]``."""
    if x.shape[1] == 1:
        local = torch.stack([x.sum(), torch.tensor(float(x.shape[0]), device=x.device)])
    else:
        local = torch.stack([(x * mask).sum(), mask.sum().float()])
    totals = trainer.accelerator.reduce(local, reduction="sum")
    return (totals[0] / totals[1].clamp(min=1.0)).item()


def masked_seq_mean(trainer: GRPOTrainer, x: Tensor, mask: Tensor) -> Tensor:
    """TRL's ``masked_seq_mean`` ``sum_t m x / sum_t m`` per row, gathered over processes."""
    return trainer.accelerator.gather(x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1))


def log_trl_metrics(trainer: GRPOTrainer, mode: str, out: PolicyLossOutput, mask: Tensor, advantages: Tensor,
                    inputs: dict, plan: LossPlan) -> None:
    """The metrics stock TRL logs for the covered options.

    Args:
        trainer: the trainer whose ``_metrics[mode]`` receive them.
        mode: ``"train"`` or ``"eval"``.
        out: the loss's output (``logp``, ``entropy``, ``ratio``, ``loss``, ``entropy_mean``).
        mask: the completion mask ``[B, T]`` (times TRL's tool mask).
        advantages: ``[B, 1]`` or ``[B, T]``.
        inputs: the micro-batch (``ref_per_token_logps`` when ``beta > 0``).
        plan: the micro-batch's ``LossPlan``.

    The importance ratio is per sequence ``[B, 1]`` at TRL's sequence level (and for vespo), as TRL's
    ``coef_1``: the masked mean over the row of the ``ratio`` output, which is the sequence ratio there.
    """
    metrics, mean = trainer._metrics[mode], functools.partial(global_masked_mean, trainer, mask=mask)
    ratio = out.ratio
    if trainer.importance_sampling_level == "sequence" or trainer.loss_type == "vespo":
        count = mask.sum(-1, keepdim=True)
        ratio = torch.where(count > 0, (ratio * mask).sum(-1, keepdim=True) / count.clamp(min=1), 1.0)
    if trainer.beta != 0.0:
        delta = inputs["ref_per_token_logps"] - out.logp
        kl = torch.exp(delta) - delta - 1
        metrics["kl"].append(mean(kl * ratio if plan.cfg.kl_bias_correction else kl))
    metrics["entropy"].append(mean(out.entropy))
    if entropy_bonus_on(trainer.args):
        policy = out.loss.detach() + plan.cfg.entropy_coef * out.entropy_mean  # TRL's loss before the bonus
        metrics["policy_loss"].append(trainer.accelerator.gather(policy).nanmean().item())
        if mode == "train" and trainer.accelerator.sync_gradients:
            metrics["entropy_coef"].append(trainer.entropy_coef)
    if trainer.loss_type in PPO_LOSS_TYPES:
        if trainer.args.delta is not None:
            ratio = torch.clamp(ratio, max=trainer.args.delta)
        low = ((ratio < 1 - trainer.epsilon_low) & (advantages < 0)).float()
        high = ((ratio > 1 + trainer.epsilon_high) & (advantages > 0)).float()
        metrics["clip_ratio/low_mean"].append(mean(low))
        metrics["clip_ratio/high_mean"].append(mean(high))
        metrics["clip_ratio/region_mean"].append(mean(((low + high) > 0).float()))
        metrics["clip_ratio/low_min"].append(nanmin(masked_seq_mean(trainer, low, mask)).item())
        metrics["clip_ratio/high_max"].append(nanmax(masked_seq_mean(trainer, high, mask)).item())
    elif trainer.loss_type == "cispo":
        metrics["cispo_clip_ratio"].append(mean(((ratio > trainer.epsilon_high) & (advantages > 0)).float()))
    elif trainer.loss_type == "vespo":  # the gamma weight of the sequence ratio w (the ratio output)
        phi = vespo_phi(torch.log(ratio), advantages, plan.cfg)
        metrics["vespo/phi_seq_mean"].append(mean(phi[:, :1]))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``sum m x / max(sum m, 1)`` on this process."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def log_actfocus_metrics(trainer: GRPOTrainer, mode: str, out: PolicyLossOutput, mask: Tensor,
                         action: Tensor) -> None:
    """``actfocus/energy_action`` and ``energy_reasoning`` (mean energy of the action / reasoning
    tokens), ``weight_mean`` / ``weight_max`` over the mask, ``action_share`` (action tokens over
    mask tokens), each a mean over processes.

    Args:
        trainer: the trainer whose ``_metrics[mode]`` receive them.
        mode: ``"train"`` or ``"eval"``.
        out: the loss's output (energies, ``weights``).
        mask: the completion mask ``[B, T]``.
        action: the action mask ``[B, T]``.
    """
    metrics = trainer._metrics[mode]
    gathered = {
        "actfocus/energy_action": out.energy_mean_action,
        "actfocus/energy_reasoning": out.energy_mean_reasoning,
        "actfocus/weight_mean": masked_mean(out.weights, mask),
        "actfocus/weight_max": torch.where(mask > 0, out.weights, 0.0).amax(),
        "actfocus/action_share": masked_mean((action > 0).float(), mask),
    }
    for name, value in gathered.items():
        metrics[name].append(trainer.accelerator.gather(value.detach().float().reshape(1)).nanmean().item())
