"""Reference per-token statistics (SPEC section 2)."""
from __future__ import annotations

import torch


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/float inputs, float64 for float64 inputs."""
    return torch.promote_types(logits.dtype, torch.float32)


def inverse_temperature(temperature: float, dtype: torch.dtype) -> float:
    """``1 / T``, at most the largest finite ``dtype`` value: a tiny ``T`` (below ``1 / max``) keeps
    its one-hot limit (``0 * (1 / T) = 0``) instead of turning ``0 * inf`` into NaN."""
    return min(1.0 / temperature, torch.finfo(dtype).max)


def row_statistics(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp, energy, entropy)`` of rows ``logits [N, V]``, with ``logp`` in float64.

    The vocabulary-wide sums run in fp32 on the centred logits ``c = (z - max z) / T``
    (``lse = max z / T + log d``, ``d = sum exp(c)``) so extreme logits do not cancel; the per-row
    scalars (``log d``, ``c[y]``) are then formed in float64, so ``logp`` carries the error of the
    sum ``d`` alone and not an fp32 rounding of a number near ``log V``: the ratio
    ``exp(logp - old_logp)`` of the loss stays accurate where it nearly cancels.
    ``p c`` is taken as 0 where ``p == 0`` (``-inf`` entries of a padded vocabulary).
    """
    z = logits.to(compute_dtype(logits))
    row_max = z.max(dim=-1, keepdim=True).values
    centred = (z - row_max) / temperature
    exp_centred = torch.exp(centred)
    d = exp_centred.sum(-1)
    mean_centred = (exp_centred * torch.where(exp_centred > 0, centred, 0.0)).sum(-1) / d
    log_d = torch.log(d.double())
    valid = targets != ignore_index
    target_z = z.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    target_centred = (target_z.double() - row_max.squeeze(-1).double()) / temperature
    logp = torch.where(valid, target_centred - log_d, 0.0)
    energy = -(row_max.squeeze(-1).double() + temperature * log_d)
    return logp, energy.to(z.dtype), (log_d - mean_centred.double()).to(z.dtype)


def token_stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``logits [N, V]``, ``targets [N]`` -> ``(logp, energy, entropy)``, each ``[N]``.

    With ``s = z / T``: ``lse = logsumexp(s)``, ``logp = s[y] - lse`` (0 where ``y == ignore_index``),
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v`` (see ``row_statistics``).
    """
    logp, energy, entropy = row_statistics(logits, targets, temperature, ignore_index)
    return logp.to(energy.dtype), energy, entropy
