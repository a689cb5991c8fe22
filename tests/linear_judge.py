"""Inputs of the fused linear path and its float64 judge (used by test_linear.py and test_variants.py).

The logits of the linear path are the GEMM output in the input dtype (rounded once, e.g. to bf16),
as an LM head computes them. ``judge_linear`` takes those values as its logits and differentiates
the GEMM in float64 (the rounding passes straight through), so that a comparison measures the
library and not the rounding of the logits.
"""
import math

import torch

from judge import judge_policy_loss, judge_stats, make_batch


def linear_batch(batch: int, length: int, hidden_size: int, vocab: int, dtype=torch.float32, device="cpu",
                 seed: int = 0, bias: bool = True, per_seq_advantages: bool = False) -> dict:
    """Hidden states, an LM head whose logits have the spread of ``make_batch``'s, and per-token
    inputs with ``old_logp`` around the true logp so the ratios fall on both sides of the clip.
    Advantages are centred at 1 (both signs still occur): a loss that cancels to nearly 0 would
    measure the cancellation of its terms rather than the kernels."""
    data = make_batch(batch, length, 2, device=device, seed=seed, per_seq_advantages=per_seq_advantages)
    del data["logits"]
    data["advantages"] += 1.0
    g = torch.Generator().manual_seed(seed + 1)
    head = {
        "hidden": torch.randn(batch, length, hidden_size, generator=g),
        "weight": torch.randn(vocab, hidden_size, generator=g) * (2 / math.sqrt(hidden_size)),
        "bias": torch.randn(vocab, generator=g) * 0.5 if bias else None,
    }
    head = {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in head.items()}
    data.update(head, targets=torch.randint(0, vocab, (batch, length), generator=g).to(device))
    logp = judge_stats(materialised(data, chunk_size=batch * length).double(), data["targets"])[0]
    noise = torch.empty(batch, length, dtype=torch.float64).uniform_(-0.6, 0.6, generator=g).to(device)
    data["old_logp"] = (logp + noise).float()
    data["ref_logp"] = (logp + 0.3 * noise.flip(-1)).float()
    return data


def materialised(data: dict, chunk_size: int) -> torch.Tensor:
    """The logits as the linear path computes them: the GEMM of each chunk in the input dtype."""
    hidden, weight, bias = data["hidden"], data["weight"], data["bias"]
    rows = hidden.reshape(-1, hidden.shape[-1])
    chunks = [torch.mm(rows[s:s + chunk_size], weight.t()) if bias is None
              else torch.addmm(bias, rows[s:s + chunk_size], weight.t()) for s in range(0, rows.shape[0], chunk_size)]
    return torch.cat(chunks).view(*hidden.shape[:-1], weight.shape[0])


def leaves(data: dict, names=("hidden", "weight", "bias")) -> dict:
    return {k: data[k].clone().requires_grad_(True) for k in names if data.get(k) is not None}


def judge_linear(data, chunk_size, cfg, cu_seqlens=None, weights=None, generator=None):
    """float64 ``(loss, per-token dict, {name: gradient})`` of the judge on the GEMM's logits."""
    params = {k: v.detach().double().requires_grad_(True) for k, v in leaves(data).items()}
    exact = params["hidden"] @ params["weight"].t() + (params["bias"] if "bias" in params else 0)
    logits = exact + (materialised(data, chunk_size).double() - exact).detach()
    loss, grad_logits, per_token = judge_policy_loss(
        logits, data["targets"], data["old_logp"], data["advantages"], data["loss_mask"], weights=weights,
        ref_logp=data["ref_logp"], cu_seqlens=cu_seqlens, cfg=cfg, generator=generator)
    grads = torch.autograd.grad(logits, list(params.values()), grad_logits)
    return loss, per_token, dict(zip(params, grads))
