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
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v``. Differentiable in ``logits``.
    """
    scaled = logits.to(compute_dtype(logits)) / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    probs = torch.softmax(scaled, dim=-1)
    # p * s is 0 where p == 0, including s == -inf (padded vocabulary entries), gradient included.
    expected_s = (probs * torch.where(probs > 0, scaled, torch.zeros_like(scaled))).sum(-1)
    valid = targets != ignore_index
    index = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(-1)
    target_s = scaled.gather(-1, index).squeeze(-1)
    logp = torch.where(valid, target_s - lse, torch.zeros_like(lse))
    return logp, -temperature * lse, lse - expected_s
