"""The checks each rank of a gloo group runs for tests/test_dtensor.py (SPEC section 8, DTensor LM
heads and logits; spawned processes import this module): the vocab-parallel DTensor head and
vocab-sharded DTensor logits against the unsharded op with no gather, an FSDP2 head sharded on its
own against the head in the root group (the same parameters after two optimizer steps), and the
placements that are errors."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

from actfocus_kernels import PolicyLossConfig, linear_policy_loss, linear_token_stats, policy_loss, token_stats
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

from tp_checks import counted_collectives

N, H, V = 12, 8, 16
CFG = PolicyLossConfig(temperature=0.8, kl_coef=0.1, agg="token-mean")


def batch(seed: int):
    """A policy-loss batch of ``N`` tokens (hidden states, targets with one ignored, per-token inputs)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[3] = -100
    old, ref = -torch.rand(N, generator=g) * 3, -torch.rand(N, generator=g) * 3
    return hidden, targets, dict(old_logp=old, advantages=torch.randn(N, generator=g), loss_mask=torch.ones(N),
                                 ref_logp=ref, cu_seqlens=torch.tensor([0, 5, N]))


def head(seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, H, generator=g) * 0.5, torch.randn(V, generator=g) * 0.1


@contextlib.contextmanager
def no_head_gather():
    """Any gather or redistribution of a DTensor inside the block raises."""
    originals = DTensor.full_tensor, DTensor.redistribute

    def refuse(*args, **kwargs):
        raise AssertionError("the head was gathered")

    DTensor.full_tensor = DTensor.redistribute = refuse
    try:
        yield
    finally:
        DTensor.full_tensor, DTensor.redistribute = originals


def check_tensor_parallel(rank: int, world_size: int) -> None:
    """DTensor TP: hidden Replicate(), head Shard(0): the unsharded op's loss, outputs and gradients."""
    mesh = init_device_mesh("cpu", (world_size,))
    hidden, targets, inputs = batch(0)
    weight, bias = head()
    ref_h, ref_w, ref_b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
    expected = linear_policy_loss(ref_h, ref_w, targets, bias=ref_b, cfg=CFG, **inputs)
    expected.loss.backward()
    d_hidden = distribute_tensor(hidden, mesh, [Replicate()]).requires_grad_()
    d_weight = distribute_tensor(weight, mesh, [Shard(0)]).requires_grad_()
    d_bias = distribute_tensor(bias, mesh, [Shard(0)]).requires_grad_()
    with no_head_gather():
        with counted_collectives() as forward_calls:
            out = linear_policy_loss(d_hidden, d_weight, targets, bias=d_bias, cfg=CFG, **inputs)
        with counted_collectives() as backward_calls:
            out.loss.backward()
        stats = linear_token_stats(d_hidden, d_weight, targets, CFG.temperature, bias=d_bias)
    # the vocab-parallel path's collectives only: the states' all-gather, the hidden gradient's all-reduce
    assert forward_calls == {"all_gather_single": 1, "all_reduce": 0}, forward_calls
    assert backward_calls == {"all_gather_single": 0, "all_reduce": 1}, backward_calls
    assert_rel_close(out.loss, expected.loss, OUTPUT_RTOL, "loss")
    for name in ("logp", "entropy", "energy", "ratio"):
        assert_rel_close(getattr(out, name), getattr(expected, name), OUTPUT_RTOL, name)
    assert_rel_close(stats.logp, expected.logp, OUTPUT_RTOL, "linear_token_stats logp")
    assert_rel_close(d_hidden.grad.to_local(), ref_h.grad, GRAD_RTOL[torch.float32], "grad hidden")
    assert_rel_close(d_weight.grad.to_local(), ref_w.grad.chunk(world_size)[rank], GRAD_RTOL[torch.float32],
                     "grad weight shard")
    assert_rel_close(d_bias.grad.to_local(), ref_b.grad.chunk(world_size)[rank], GRAD_RTOL[torch.float32],
                     "grad bias shard")


def check_vocab_sharded_logits(rank: int, world_size: int) -> None:
    """DTensor logits sharded on the vocabulary (last) dimension: the unsharded op's loss, outputs and
    gradient shard; Replicate() logits run locally."""
    mesh = init_device_mesh("cpu", (world_size,))
    hidden, targets, inputs = batch(1)
    weight, bias = head()
    logits = (hidden @ weight.T + bias).view(2, N // 2, V)
    targets, inputs = targets.view(2, N // 2), {k: v.view(2, N // 2) for k, v in inputs.items() if k != "cu_seqlens"}
    reference = logits.clone().requires_grad_()
    expected = policy_loss(reference, targets, cfg=CFG, **inputs)
    expected.loss.backward()
    for placement in (Shard(-1), Replicate()):
        sharded = distribute_tensor(logits, mesh, [placement]).requires_grad_()
        with no_head_gather():
            out = policy_loss(sharded, targets, cfg=CFG, **inputs)
            out.loss.backward()
            stats = token_stats(sharded, targets, CFG.temperature)
        assert_rel_close(out.loss, expected.loss, OUTPUT_RTOL, f"{placement} loss")
        assert_rel_close(out.entropy, expected.entropy, OUTPUT_RTOL, f"{placement} entropy")
        assert_rel_close(stats.logp, expected.logp, OUTPUT_RTOL, f"{placement} token_stats logp")
        local_grad = reference.grad.chunk(world_size, dim=-1)[rank] if placement != Replicate() else reference.grad
        assert_rel_close(sharded.grad.to_local(), local_grad, GRAD_RTOL[torch.float32], f"{placement} grad")


def check_batch_sharded_hidden(rank: int, world_size: int) -> None:
    """Hidden states a DTensor Shard(0) (each rank its rows), head Shard(0): this rank's loss on the
    gathered head; the head's gradient shard is the mean over the ranks of their full gradients."""
    mesh = init_device_mesh("cpu", (world_size,))
    hidden, targets, inputs = batch(2)
    inputs.pop("cu_seqlens")
    weight, bias = head()
    rows = N // world_size
    grads, losses = [], []
    for r in range(world_size):  # every rank's own call, unsharded
        w = weight.clone().requires_grad_()
        part = slice(r * rows, (r + 1) * rows)
        out = linear_policy_loss(hidden[part], w, targets[part], bias=bias, cfg=CFG,
                                 **{k: v[part] for k, v in inputs.items()})
        out.loss.backward()
        grads.append(w.grad)
        losses.append(out.loss.detach())
    d_hidden = distribute_tensor(hidden, mesh, [Shard(0)])
    d_weight = distribute_tensor(weight, mesh, [Shard(0)]).requires_grad_()
    part = slice(rank * rows, (rank + 1) * rows)
    out = linear_policy_loss(d_hidden, d_weight, targets[part], bias=distribute_tensor(bias, mesh, [Shard(0)]),
                             cfg=CFG, **{k: v[part] for k, v in inputs.items()})
    out.loss.backward()
    assert_rel_close(out.loss, losses[rank], OUTPUT_RTOL, "this rank's loss")
    mean = torch.stack(grads).mean(dim=0)
    assert_rel_close(d_weight.grad.to_local(), mean.chunk(world_size)[rank], GRAD_RTOL[torch.float32],
                     "grad weight shard: the ranks' mean")


class TinyLM(nn.Module):
    """Embedding, one layer, LM head; ``forward`` returns the last hidden states (the trainers' patch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(V, H)
        self.body = nn.Linear(H, H)
        self.lm_head = nn.Linear(H, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(self.embed(ids)))


def fsdp_params_after_steps(rank: int, shard_head: bool) -> list:
    """Two Adam steps of FSDP2 ``TinyLM`` on this rank's tokens; the full parameters after them."""
    model = TinyLM()
    if shard_head:
        fully_shard(model.lm_head)  # a group of its own whose forward is never called
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(2):
        _, targets, inputs = batch(100 * step + rank)  # each rank its own tokens
        hidden = model(targets.clamp(min=0))
        out = linear_policy_loss(hidden, model.lm_head.weight, targets, bias=model.lm_head.bias, cfg=CFG, **inputs)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.full_tensor().detach() for p in model.parameters()]


def check_fsdp2_head_sharded_on_its_own(rank: int, world_size: int) -> None:
    """The gathered head (full_tensor with Partial("avg") gradients) steps like the root-group head."""
    init_device_mesh("cpu", (world_size,))
    root = fsdp_params_after_steps(rank, shard_head=False)
    own = fsdp_params_after_steps(rank, shard_head=True)
    start = [p.detach() for p in TinyLM().parameters()]
    for a, b, s in zip(own, root, start):
        assert_rel_close(a, b, 1e-6, "parameter after two steps")
        assert not torch.equal(b, s)  # it trained


def check_errors(rank: int, world_size: int) -> None:
    """Unsupported placements are ValueErrors naming them, on every rank before any collective."""
    mesh = init_device_mesh("cpu", (world_size,))
    hidden, targets, inputs = batch(0)
    weight, bias = head()
    replicated = distribute_tensor(hidden, mesh, [Replicate()])
    cases = [
        (replicated, distribute_tensor(weight, mesh, [Shard(1)]), None, {}, r"Shard\(dim=1\)"),
        (hidden, DTensor.from_local(weight, mesh, [Partial()]), None, {}, "Partial"),
        (replicated, distribute_tensor(weight, mesh, [Replicate()]), None, {}, "tensor parallel needs"),
        (replicated, weight, None, {}, "pass the LM head as a DTensor"),
        (hidden, distribute_tensor(weight, mesh, [Shard(0)]), bias, {}, "bias must be a DTensor"),
        (hidden, distribute_tensor(weight, mesh, [Shard(0)]), None, dict(tp_group=mesh.get_group()), "tp_group"),
        (distribute_tensor(hidden, mesh, [Shard(1)]), distribute_tensor(weight, mesh, [Shard(0)]), None, {},
         r"hidden: a DTensor placed Shard\(dim=1\)"),
    ]
    for h, w, b, extra, match in cases:
        with pytest.raises(ValueError, match=match):
            linear_policy_loss(h, w, targets, bias=b, cfg=CFG, **inputs, **extra)
    with pytest.raises(ValueError, match="logits: a DTensor placed Partial"):
        token_stats(DTensor.from_local(torch.randn(N, V), mesh, [Partial()]), targets)
    with pytest.raises(ValueError, match="tp_group"):
        policy_loss(distribute_tensor(torch.randn(N, V), mesh, [Shard(1)]), targets, tp_group=mesh.get_group(),
                    cfg=CFG, **inputs)
    odd = torch.randn(V + 1, H)
    with pytest.raises(ValueError, match="not divisible"):
        linear_token_stats(replicated, distribute_tensor(odd, mesh, [Shard(0)]), targets)


def every_check(rank: int, world_size: int) -> None:
    check_tensor_parallel(rank, world_size)
    check_vocab_sharded_logits(rank, world_size)
    check_batch_sharded_hidden(rank, world_size)
    check_fsdp2_head_sharded_on_its_own(rank, world_size)
    check_errors(rank, world_size)
