"""Each policy variant (SPEC section 4.1) forward + backward from logits: ours (``policy_loss``) against
its eager form (log-softmax materialised by torch, the same scalar functions ``variants.objective``
on the gathered log-probs and entropies, autograd through it), measured side by side in one run.

    python -m benchmarks.bench_variants --device cpu [--tokens 1024] [--vocab 32000]

Prints a Markdown table (median of the repeats, and the ratio eager / ours) and writes it to
``benchmarks/out/variants_<device>.md``. The two-pass variants read the logits twice and write the
gradient once (statistics, then the ``row_gradient`` pass); the eager form materialises ``[N, V]``
fp32 log-probabilities, probabilities and their gradients.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from actfocus_kernels import PolicyLossConfig, policy_loss
from actfocus_kernels.aggregation import mask_multiplier
from actfocus_kernels.layout import TokenLayout
from actfocus_kernels.variants import TokenTerms, is_fused, objective

CONFIGS = {
    "ppo (fused)": PolicyLossConfig(clip_high=0.28),
    "ppo + delta": PolicyLossConfig(clip_high=0.28, delta=4.0),
    "gspo": PolicyLossConfig(policy="gspo", agg="seq-mean-token-mean"),
    "gspo_token": PolicyLossConfig(policy="gspo_token", agg="seq-mean-token-mean"),
    "cispo": PolicyLossConfig(policy="cispo", clip_high=4.0),
    "cispo_two_sided": PolicyLossConfig(policy="cispo_two_sided"),
    "sapo": PolicyLossConfig(policy="sapo", agg="seq-mean-token-mean"),
    "gpg": PolicyLossConfig(policy="gpg"),
    "gmpo": PolicyLossConfig(policy="gmpo", clip_low=0.4, clip_high=0.4),
    "clip_cov": PolicyLossConfig(policy="clip_cov"),
    "kl_cov": PolicyLossConfig(policy="kl_cov"),
    "trl bias-corrected k3 + entropy": PolicyLossConfig(kl_coef=0.04, kl_bias_correction=True, entropy_coef=0.01,
                                                        entropy_agg="token-mean"),
}


def make_inputs(tokens: int, vocab: int, seq_len: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = tokens // seq_len
    logits = torch.randn(batch, seq_len, vocab, generator=g) * 2
    targets = torch.randint(0, vocab, (batch, seq_len), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    inputs = dict(logits=logits, targets=targets,
                  old_logp=logp + torch.empty(batch, seq_len).uniform_(-0.3, 0.3, generator=g),
                  ref_logp=logp + 0.1 * torch.randn(batch, seq_len, generator=g),
                  advantages=torch.randn(batch, generator=g), loss_mask=torch.ones(batch, seq_len))
    return {k: v.to(device) for k, v in inputs.items()}


def eager_loss(x: dict, cfg: PolicyLossConfig) -> torch.Tensor:
    """The variant's eager form: torch log-softmax over the whole vocabulary, then its scalars."""
    logits = x["logits"]
    log_probs = torch.log_softmax(logits.float() / cfg.temperature, -1)
    logp = log_probs.gather(-1, x["targets"].unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    rows = TokenLayout.of(tuple(x["targets"].shape), logits.device)
    multiplier = mask_multiplier(x["loss_mask"], x["targets"].reshape(-1), rows, cfg.ignore_index)
    terms = TokenTerms(logp=logp.reshape(-1), entropy=entropy.reshape(-1), old_logp=x["old_logp"].reshape(-1),
                       advantages=x["advantages"][rows.seq_ids], ref_logp=x["ref_logp"].reshape(-1),
                       weights=torch.ones_like(multiplier), weighted=False, multiplier=multiplier, rows=rows)
    return objective(terms, cfg, torch.Generator().manual_seed(0)).loss


def ours_loss(x: dict, cfg: PolicyLossConfig, backend: str) -> torch.Tensor:
    return policy_loss(x["logits"], x["targets"], x["old_logp"], x["advantages"], x["loss_mask"],
                       ref_logp=x["ref_logp"], cfg=cfg, backend=backend,
                       generator=torch.Generator().manual_seed(0)).loss


def timed(step, x: dict, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Median seconds of ``step`` forward + backward, its loss and the logits' gradient."""
    times = []
    for _ in range(repeats + 1):  # the first is the warm-up
        x["logits"].grad = None
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if x["logits"].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), loss.detach(), x["logits"].grad.clone()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    x = make_inputs(args.tokens, args.vocab, args.seq_len, args.device)
    x["logits"].requires_grad_(True)
    lines = [f"N={args.tokens}, V={args.vocab}, fp32, {args.device}, backend {args.backend}, torch {torch.__version__}",
             "", "| variant | gradient | eager ms | ours ms | eager / ours | rel. diff loss | rel. diff grad |",
             "|---|---|---|---|---|---|---|"]
    for name, cfg in CONFIGS.items():
        eager_s, eager_value, eager_grad = timed(lambda: eager_loss(x, cfg), x, args.repeats)
        ours_s, ours_value, ours_grad = timed(lambda: ours_loss(x, cfg, args.backend), x, args.repeats)
        loss_diff = float((ours_value - eager_value).abs() / eager_value.abs().clamp(min=1e-30))
        grad_diff = float((ours_grad - eager_grad).norm() / eager_grad.norm().clamp(min=1e-30))
        passes = "single pass" if is_fused(cfg) else "two passes"
        lines.append(f"| {name} | {passes} | {eager_s * 1e3:.1f} | {ours_s * 1e3:.1f} | {eager_s / ours_s:.2f}x "
                     f"| {loss_diff:.1e} | {grad_diff:.1e} |")
        print(lines[-1], flush=True)
    out = Path("benchmarks/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"variants_{args.device}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
