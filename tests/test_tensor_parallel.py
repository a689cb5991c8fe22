"""Vocab-parallel statistics and policy losses (SPEC section 8) on CPU gloo groups of 2 and 4
processes: every rank's per-token outputs and loss equal the unsharded op's, and its gradients the
unsharded gradients of its shard, within SPEC section 6, on every backend of the machine; one
collective in forward, none in backward (the linear path: one all-reduce of the gradient of
``hidden``); mismatches raise on every rank instead of hanging. One spawn per group size runs every
case (``tp_checks``: processes are the slow part)."""
from __future__ import annotations

import os

import pytest
import torch

from actfocus_kernels import native, policy_loss, token_stats
from actfocus_kernels.data_parallel import global_counts
from benchmarks import bench_tensor_parallel, tp_nccl_check

from devices import BACKENDS
from distributed import run_ranks
from tp_checks import every_check


def cpu_backends() -> tuple[str, ...]:
    """The backends that take the CPU tensors of a gloo group on this machine (on a GPU machine
    BACKENDS are those of the GPU)."""
    interpreted = "triton" in BACKENDS and os.environ.get("TRITON_INTERPRET") == "1"
    return ("reference",) + (("triton",) if interpreted else ()) + (("cpu",) if native.has_backend("cpu") else ())


@pytest.mark.parametrize("world_size", [2, 4])
def test_vocab_parallel_statistics_and_losses(world_size):
    run_ranks(every_check, world_size, cpu_backends())


def test_benchmark_smoke(capsys):
    assert bench_tensor_parallel.main(["--tokens", "16", "--vocab", "64", "--target-s", "0"]) == 0
    table = capsys.readouterr().out
    assert "| stats, vocab-parallel (ours) | 1 | 12.75 | 12.75 |" in table  # (1 + 16) rows of 12 bytes / 16
    assert "| collectives only: Megatron (3 all-reduces) | 3 | 12.00 | 12.00 |" in table


def test_process_group_check_of_the_gpu_script_on_gloo(capsys):
    """The GPU script's NCCL check (benchmarks/tp_nccl_check.py) is the same code on a gloo group."""
    assert tp_nccl_check.main(["--dist-backend", "gloo", "--ranks", "2", "--tokens", "16", "--vocab", "64"]) == 0
    assert capsys.readouterr().out.count("stats+loss") == 2


def test_tp_group_without_a_process_group_is_an_error():
    logits, targets = torch.randn(3, 8), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        token_stats(logits, targets, tp_group=object())
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        policy_loss(logits, targets, None, torch.ones(3), torch.ones(3), tp_group=object())


def test_global_counts_of_one_process():
    """Without a process group: this batch's counts (packed, ignored targets and empty sequences)."""
    mask = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.0])
    counts = global_counts(mask, cu_seqlens=torch.tensor([0, 2, 4, 5]), targets=torch.tensor([1, -100, 2, 3, 4]))
    assert (counts.tokens, counts.sequences, counts.active_sequences) == (1.5, 3, 2)
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        global_counts(mask, group=object())
