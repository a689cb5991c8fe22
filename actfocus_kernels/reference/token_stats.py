"""Reference per-token statistics (SPEC sections 2 and 10), the logit transform included."""
from __future__ import annotations

import torch

from ..contract import TokenStatsOutputs


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/float inputs, float64 for float64 inputs."""
    return torch.promote_types(logits.dtype, torch.float32)


def inverse_temperature(temperature: float, dtype: torch.dtype) -> float:
    """``1 / T``, at most the largest finite ``dtype`` value: a tiny ``T`` (below ``1 / max``) keeps
    its one-hot limit (``0 * (1 / T) = 0``) instead of turning ``0 * inf`` into NaN."""
    return min(1.0 / temperature, torch.finfo(dtype).max)


def transformed(z: torch.Tensor, logit_scale: float, softcap: float) -> tuple[torch.Tensor, float]:
    """``(v, value_scale)`` with ``s = value_scale * v / T`` (SPEC 10), ``v`` in ``z``'s dtype.

    Without cap (``softcap == 0``) ``v = z`` and ``value_scale = logit_scale``: the scale is folded
    into the temperature (``T / logit_scale``), so ``logit_scale = 1`` is bit-identical to no
    transform. With a cap ``v = softcap tanh(logit_scale z / softcap)`` and ``value_scale = 1``; a
    ``-inf`` logit stays ``-inf`` (an excluded entry, not ``-softcap``). ``v`` is increasing in ``z``,
    so the row's max of ``v`` is ``v`` of the raw max.
    """
    if softcap == 0:
        return z, logit_scale
    capped = softcap * torch.tanh(z * (logit_scale / softcap))
    return torch.where(z == float("-inf"), z, capped), 1.0


def transform_slope(z: torch.Tensor, logit_scale: float, softcap: float, temperature: float) -> torch.Tensor | float:
    """``ds/dz`` (SPEC 10): ``logit_scale (1 - tanh^2(logit_scale z / softcap)) / T``, or the constant
    ``logit_scale / T`` (capped at the dtype's max, see ``inverse_temperature``) without cap."""
    inverse = inverse_temperature(temperature / (logit_scale if softcap == 0 else 1.0), z.dtype)
    if softcap == 0:
        return inverse
    tanh = torch.tanh(z * (logit_scale / softcap))
    return (logit_scale * inverse) * (1.0 - tanh * tanh)


def row_statistics(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
    logit_scale: float = 1.0, softcap: float = 0.0, extra_stats: bool = False,
) -> TokenStatsOutputs:
    """``TokenStatsOutputs`` of rows ``logits [N, V]``, with ``logp`` in float64.

    With ``v, value_scale = transformed(z)`` and ``T' = T / value_scale`` (so ``s = v / T'``): the
    vocabulary-wide sums run in fp32 on the centred values ``c = (v - max v) / T'``
    (``lse = max v / T' + log d``, ``d = sum exp(c)``) so extreme logits do not cancel; the per-row
    scalars (``log d``, ``c[y]``) are then formed in float64, so ``logp`` carries the error of the
    sum ``d`` alone and not an fp32 rounding of a number near ``log V``: the ratio
    ``exp(logp - old_logp)`` of the loss stays accurate where it nearly cancels.
    ``p c`` is taken as 0 where ``p == 0`` (``-inf`` entries of a padded vocabulary).
    Extras: ``log_sum_sq_probs = log(sum exp(2c)) - 2 log d``, ``mean_logits = mean_v s_v`` (``-inf``
    when a logit is), ``is_top1 = y`` is the first index of ``max v``.
    """
    z = logits.to(compute_dtype(logits))
    values, value_scale = transformed(z, logit_scale, softcap)
    row_temperature = temperature / value_scale
    row_max = values.max(dim=-1, keepdim=True).values
    centred = (values - row_max) / row_temperature
    exp_centred = torch.exp(centred)
    d = exp_centred.sum(-1)
    mean_centred = (exp_centred * torch.where(exp_centred > 0, centred, 0.0)).sum(-1) / d
    log_d = torch.log(d.double())
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0).unsqueeze(-1)
    target_value = values.gather(-1, safe_targets).squeeze(-1)
    target_centred = (target_value.double() - row_max.squeeze(-1).double()) / row_temperature
    logp = torch.where(valid, target_centred - log_d, 0.0)
    energy = -(row_max.squeeze(-1).double() * value_scale + temperature * log_d)
    entropy = (log_d - mean_centred.double()).to(z.dtype)
    if not extra_stats:
        return TokenStatsOutputs(logp, energy.to(z.dtype), entropy, z.new_empty(0, dtype=torch.float32),
                                 z.new_empty(0, dtype=torch.float32), z.new_empty(0, dtype=torch.bool))
    log_sum_sq = torch.log(torch.exp(2 * centred).sum(-1).double()) - 2 * log_d
    mean_logits = values.double().mean(-1) / row_temperature
    first_max = torch.argmax(torch.where(torch.isnan(values), float("-inf"), values), dim=-1)
    is_top1 = valid & (first_max == targets) & (target_value == row_max.squeeze(-1))
    return TokenStatsOutputs(logp, energy.to(z.dtype), entropy, log_sum_sq.to(z.dtype), mean_logits.to(z.dtype),
                             is_top1)


def token_stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
    logit_scale: float = 1.0, softcap: float = 0.0, extra_stats: bool = False,
) -> TokenStatsOutputs:
    """Rows ``logits [N, V]``, ``targets [N]`` -> ``TokenStatsOutputs``, each ``[N]`` (or ``[0]``).

    With ``s`` the transformed logits (SPEC 10; ``s = z / T`` by default): ``lse = logsumexp(s)``,
    ``logp = s[y] - lse`` (0 where ``y == ignore_index``), ``energy = -T lse``,
    ``entropy = lse - sum_v p_v s_v``; extras as in ``row_statistics``.
    """
    outputs = row_statistics(logits, targets, temperature, ignore_index, logit_scale, softcap, extra_stats)
    return outputs._replace(logp=outputs.logp.to(outputs.energy.dtype))
