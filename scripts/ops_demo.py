"""A short CPU tour of the ops: statistics, ActFocus weights, the fused loss, and a naive-vs-fused
timing (the naive loss is the benchmarks' baseline, benchmarks/naive.py). Run by ``make ops-demo``."""
import sys
import time
from pathlib import Path

import torch

import actfocus_kernels as ak

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

from benchmarks import naive  # noqa: E402


def timed(fn, repeats=5):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    torch.manual_seed(0)
    batch, length, vocab = 4, 128, 32000
    logits = torch.randn(batch, length, vocab) * 2
    targets = torch.randint(0, vocab, (batch, length))
    loss_mask = torch.ones(batch, length)
    action_mask = torch.zeros(batch, length)
    action_mask[:, -8:] = 1  # a short action span after a long reasoning span
    advantages = torch.randn(batch)

    stats = ak.token_stats(logits, targets)
    old_logp = stats.logp + 0.05 * torch.randn(batch, length)
    weights = ak.actfocus_weights(stats, loss_mask, action_mask, ak.ActFocusConfig())
    print(f"backend auto on CPU -> {ak.backends.resolve_backend('auto', logits.device)}")
    print(f"energy: action tokens {stats.energy[action_mask.bool()].mean():.3f}, "
          f"reasoning tokens {stats.energy[~action_mask.bool()].mean():.3f}")
    print(f"ActFocus weights, sequence 0, last 10 tokens: {[round(w, 2) for w in weights[0, -10:].tolist()]}")

    z = logits.clone().requires_grad_(True)
    out = ak.policy_loss(z, targets, old_logp, advantages, loss_mask, weights=weights)
    out.loss.backward()
    print(f"loss {out.loss.item():.5f}  clip_frac {out.clip_frac.item():.3f}  approx_kl {out.approx_kl.item():.2e}  "
          f"entropy {out.entropy_mean.item():.3f}")

    def naive_step():
        z = logits.clone().requires_grad_(True)
        naive.policy_loss(z, targets, old_logp, advantages, loss_mask, weights, action_mask).loss.backward()

    def fused_step():
        z = logits.clone().requires_grad_(True)
        ak.policy_loss(z, targets, old_logp, advantages, loss_mask, weights=weights).loss.backward()

    naive_ms, fused_ms = timed(naive_step), timed(fused_step)
    print(f"loss fwd+bwd, N={batch * length}, V={vocab} fp32 on this CPU: naive torch {naive_ms:.1f} ms, "
          f"actfocus_kernels {fused_ms:.1f} ms ({naive_ms / fused_ms:.1f}x)")


if __name__ == "__main__":
    main()
