"""The vocab-parallel path on a real process group of the machine (SPEC section 8): NCCL with one
rank per visible GPU in the GPU script (one GPU: a group of one, whose collectives still run through
NCCL on CUDA tensors), gloo on CPU otherwise. Every rank checks its per-token statistics, policy loss
and the gradient of its own shard against the unsharded op on the same inputs.

    python -m benchmarks.tp_nccl_check --dist-backend nccl            # the GPU script
    python -m benchmarks.tp_nccl_check --dist-backend gloo --ranks 2  # CPU (its test)

Exits 0 and prints one line per rank when every check holds; fails with the first rank's error.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actfocus_kernels import PolicyLossConfig, policy_loss, token_stats
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, relative_error

RTOL = {"stats": OUTPUT_RTOL, "grad": GRAD_RTOL[torch.float32]}  # SPEC section 6, fp32 logits


def check(rank: int, world_size: int, device: torch.device, tokens: int, vocab: int) -> str:
    """Statistics and the GSPO loss (a coupled variant) of one shard against the whole vocabulary."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(tokens, vocab, generator=g) * 2).to(device)
    targets = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    old_logp = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(1) + 0.1
    advantages, mask = torch.randn(tokens, generator=g).to(device), torch.ones(tokens, device=device)
    cu_seqlens = torch.tensor([0, tokens // 2, tokens], device=device)
    width = vocab // world_size
    cfg = PolicyLossConfig(policy="gspo", agg="seq-mean-token-mean")
    errors = {}
    full = logits.clone().requires_grad_(True)
    shard = logits[:, rank * width:(rank + 1) * width].clone().requires_grad_(True)
    expected = token_stats(full, targets)
    ours = token_stats(shard, targets, tp_group=dist.group.WORLD)
    errors["stats"] = max(relative_error(a, b) for a, b in zip(ours, expected))
    full.grad = shard.grad = None
    expected_loss = policy_loss(full, targets, old_logp, advantages, mask, cu_seqlens=cu_seqlens, cfg=cfg)
    ours_loss = policy_loss(shard, targets, old_logp, advantages, mask, cu_seqlens=cu_seqlens, cfg=cfg,
                            tp_group=dist.group.WORLD)
    expected_loss.loss.backward()
    ours_loss.loss.backward()
    errors["stats"] = max(errors["stats"], relative_error(ours_loss.loss, expected_loss.loss))
    errors["grad"] = relative_error(shard.grad, full.grad[:, rank * width:(rank + 1) * width])
    bad = {k: v for k, v in errors.items() if not v <= RTOL[k]}
    if bad:
        raise AssertionError(f"rank {rank}: relative errors above {RTOL}: {bad}")
    return f"rank {rank}/{world_size} on {device}: stats+loss {errors['stats']:.1e}, grad {errors['grad']:.1e}"


def rank_main(rank: int, world_size: int, store: str, dist_backend: str, tokens: int, vocab: int, reports) -> None:
    device = torch.device("cuda", rank) if dist_backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(dist_backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        reports.put((rank, True, check(rank, world_size, device, tokens, vocab)))
    except Exception as error:  # noqa: BLE001 - reported to the parent
        reports.put((rank, False, f"rank {rank}: {type(error).__name__}: {error}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist-backend", choices=("nccl", "gloo"), default="nccl")
    parser.add_argument("--ranks", type=int, default=None, help="default: the visible GPUs (nccl), 2 (gloo)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args(argv)
    ranks = args.ranks or (torch.cuda.device_count() if args.dist_backend == "nccl" else 2)
    if ranks < 1 or args.vocab % ranks:
        parser.error(f"need at least one rank and a vocabulary divisible by it, got {ranks} ranks, V={args.vocab}")
    context = mp.get_context("spawn")
    reports = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [context.Process(target=rank_main, args=(rank, ranks, store, args.dist_backend, args.tokens,
                                                         args.vocab, reports)) for rank in range(ranks)]
        for proc in procs:
            proc.start()
        results = [reports.get(timeout=180) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    for _rank, _ok, line in sorted(results):
        print(line)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
