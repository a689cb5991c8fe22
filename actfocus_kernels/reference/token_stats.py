"""Reference per-token statistics (SPEC section 2)."""
from __future__ import annotations

import torch


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/float inputs, float64 for float64 inputs."""
    return torch.promote_types(logits.dtype, torch.float32)


def token_stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``logits [N, V]``, ``targets [N]`` -> ``(logp, energy, entropy)``, each ``[N]``.

    With ``s = z / T``: ``lse = logsumexp(s)``, ``logp = s[y] - lse`` (0 where ``y == ignore_index``),
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v``. Computed on the centred logits
    ``c = (z - max z) / T`` (``lse = max z / T + logsumexp(c)``) so that extreme logits do not
    cancel; ``p c`` is taken as 0 where ``p == 0`` (``-inf`` entries of a padded vocabulary).
    """
    z = logits.to(compute_dtype(logits))
    row_max = z.max(dim=-1, keepdim=True).values
    centred = (z - row_max) / temperature
    lse_centred = torch.logsumexp(centred, dim=-1)
    probs = torch.softmax(centred, dim=-1)
    expected_centred = (probs * torch.where(probs > 0, centred, 0.0)).sum(-1)
    valid = targets != ignore_index
    target_centred = centred.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, target_centred - lse_centred, 0.0)
    energy = -(row_max.squeeze(-1) + temperature * lse_centred)
    return logp, energy, lse_centred - expected_centred
