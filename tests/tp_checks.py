"""The checks each rank of a gloo group runs for tests/test_tensor_parallel.py (spawned processes
import this module, not the test module, whose imports resolve differently in the full suite):
vocab-parallel statistics and policy losses against the unsharded op, collectives counted, the
errors every rank must raise alike, and the data-parallel counts."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist

from actfocus_kernels import (
    ActFocusConfig,
    PolicyLossConfig,
    compat,
    linear_policy_loss,
    linear_token_stats,
    policy_loss,
    token_stats,
)
from actfocus_kernels.data_parallel import global_counts
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close
from benchmarks.megatron_vocab_parallel import VocabParallelCrossEntropy

from judge import make_batch

TEMPERATURE = 0.8
IGNORE = -100


def block(tensor: torch.Tensor, rank: int, world_size: int, dim: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous block of ``tensor`` along ``dim``."""
    return tensor.chunk(world_size, dim=dim)[rank].contiguous()


@contextlib.contextmanager
def counted_collectives():
    """Counts calls of the collectives the library uses, by name."""
    counts = {"all_gather_single": 0, "all_reduce": 0}
    owners = {"all_gather_single": compat, "all_reduce": dist}  # compat: torch 2.11 has no dist.all_gather_single
    originals = {name: getattr(owners[name], name) for name in counts}

    def counting(name):
        def call(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return call

    for name in counts:
        setattr(owners[name], name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(owners[name], name, original)


def incoming(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(3)]


def backward_of(stats, grads):
    sum((value * grad).sum() for value, grad in zip(stats, grads)).backward()


def stats_batch(world_size: int, vocab: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 5, vocab, generator=g) * 3).to(dtype)
    logits[0, 1, :] += 40.0  # a large offset: the merge works on differences of log-normalisers
    logits[1, 0, vocab // world_size:] -= 30.0  # the first shard holds nearly all the mass
    targets = torch.randint(0, vocab, (2, 5), generator=g)
    targets[1, 2] = IGNORE
    targets[0, 0], targets[0, 3] = 0, vocab - 1  # the first and the last id
    return logits, targets


def check_logits_path(rank, world_size, backend, dtype):
    logits, targets = stats_batch(world_size, 24, seed=1)
    logits = logits.to(dtype)
    grads = incoming(targets.shape, 2)
    full = logits.clone().requires_grad_(True)
    expected = token_stats(full, targets, TEMPERATURE, backend)
    backward_of(expected, grads)
    shard = block(logits, rank, world_size, -1).requires_grad_(True)
    with counted_collectives() as forward_calls:
        ours = token_stats(shard, targets, TEMPERATURE, backend, tp_group=dist.group.WORLD)
    with counted_collectives() as backward_calls:
        backward_of(ours, grads)
    assert forward_calls == {"all_gather_single": 1, "all_reduce": 0}, forward_calls
    assert backward_calls == {"all_gather_single": 0, "all_reduce": 0}, backward_calls
    for name, value, reference in zip(("logp", "energy", "entropy"), ours, expected):
        assert_rel_close(value, reference, OUTPUT_RTOL, f"{backend} {dtype} {name}")
    assert shard.grad.dtype == dtype
    assert_rel_close(shard.grad, block(full.grad, rank, world_size, -1), GRAD_RTOL[dtype], f"{backend} {dtype} grad")


def check_linear_path(rank, world_size, backend, with_bias):
    vocab, features = 32, 16
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 4, features, generator=g)
    weight = torch.randn(vocab, features, generator=g) / 2
    bias = torch.randn(vocab, generator=g) if with_bias else None
    targets = torch.randint(0, vocab, (2, 4), generator=g)
    targets[1, 3] = IGNORE
    grads = incoming(targets.shape, 6)
    full = {"hidden": hidden, "weight": weight} | ({"bias": bias} if with_bias else {})
    full = {k: v.clone().requires_grad_(True) for k, v in full.items()}
    expected = linear_token_stats(full["hidden"], full["weight"], targets, TEMPERATURE, bias=full.get("bias"),
                                  chunk_size=3, backend=backend)
    backward_of(expected, grads)
    ours = {"hidden": hidden.clone()} | {k: block(v.detach(), rank, world_size, 0) for k, v in full.items()
                                         if k != "hidden"}
    ours = {k: v.requires_grad_(True) for k, v in ours.items()}
    with counted_collectives() as forward_calls:
        stats = linear_token_stats(ours["hidden"], ours["weight"], targets, TEMPERATURE, bias=ours.get("bias"),
                                   chunk_size=3, backend=backend, tp_group=dist.group.WORLD)
    with counted_collectives() as backward_calls:
        backward_of(stats, grads)
    assert forward_calls == {"all_gather_single": 1, "all_reduce": 0}, forward_calls
    assert backward_calls == {"all_gather_single": 0, "all_reduce": 1}, backward_calls  # grad of hidden
    for name, value, reference in zip(("logp", "energy", "entropy"), stats, expected):
        assert_rel_close(value, reference, OUTPUT_RTOL, f"linear {backend} {name}")
    assert_rel_close(ours["hidden"].grad, full["hidden"].grad, GRAD_RTOL[torch.float32], f"linear {backend} hidden")
    for name in ("weight", "bias") if with_bias else ("weight",):
        assert_rel_close(ours[name].grad, block(full[name].grad, rank, world_size, 0), GRAD_RTOL[torch.float32],
                         f"linear {backend} {name}")


def raises_everywhere(match, call):
    with pytest.raises(ValueError, match=match):
        call()


def check_errors(rank, world_size):
    group = dist.group.WORLD
    logits, targets = stats_batch(world_size, 24, seed=3)
    shard = block(logits, rank, world_size, -1)
    # checked before the collective, the same on every rank
    raises_everywhere(r"outside \[0, 24\)", lambda: token_stats(shard, torch.full_like(targets, 24), tp_group=group))
    # found in the gathered header, so every rank raises the same error: no rank waits for the others
    uneven = logits[..., :24 // world_size + (rank == 0)]  # rank 0 holds one id more
    raises_everywhere("local vocabulary sizes differ", lambda: token_stats(uneven, targets.clamp(max=0),
                                                                           tp_group=group))
    raises_everywhere("temperatures differ", lambda: token_stats(shard, targets, 1.0 + rank, tp_group=group))
    other = targets.clone()
    other[0, 0] = rank
    raises_everywhere("target checksums differ", lambda: token_stats(shard, other, tp_group=group))
    # a check only one rank fails (before the collective): it still takes part, so every rank raises
    lone = r"rejected their input|{}"
    raises_everywhere(lone.format(r"outside \[0, 24\)"), lambda: token_stats(
        shard, torch.where(torch.tensor(rank == 1), torch.full_like(targets, 24), targets), tp_group=group))
    raises_everywhere(lone.format("empty vocabulary"), lambda: token_stats(
        shard[..., :0] if rank == 1 else shard, targets, tp_group=group))
    ones, mask = torch.ones(targets.shape), torch.ones(targets.shape)
    mask[0, 0] = -1.0 if rank == 1 else 1.0
    raises_everywhere(lone.format("loss_mask must be finite"), lambda: policy_loss(
        shard, targets, None, ones, mask, tp_group=group))
    hidden, weight = torch.randn(2, 5, 4), torch.randn(24 // world_size, 4)
    with pytest.raises((ValueError, TypeError), match=lone.format("weight dtype")):
        linear_token_stats(hidden, weight.double() if rank == 1 else weight, targets, tp_group=group)
    # the group still works afterwards
    stats = token_stats(shard, targets, tp_group=group)
    assert_rel_close(stats.energy, token_stats(logits, targets).energy, OUTPUT_RTOL, "energy after errors")


def check_global_counts(rank, world_size):
    mask = torch.zeros(2 + rank, world_size)
    mask[0, : rank + 1] = 1.0
    mask[-1, 0] = 0.5
    counts = global_counts(mask, dist.group.WORLD)
    tokens = sum(r + 1.5 for r in range(world_size))  # rank r: r + 1 ones and one half
    assert counts.tokens == pytest.approx(tokens), counts
    assert counts.sequences == sum(2 + r for r in range(world_size)), counts
    assert counts.active_sequences == 2 * world_size, counts
    with counted_collectives() as calls:
        global_counts(mask, dist.group.WORLD)
    assert calls["all_reduce"] == 1


def check_megatron_scheme(rank, world_size):
    """The benchmark's comparison computes the same log-probs and gradient as ours."""
    logits, targets = stats_batch(world_size, 24, seed=4)
    targets[1, 2] = 3  # Megatron's scheme has no ignore_index
    logits, targets = logits.view(-1, 24), targets.view(-1)
    ours = block(logits, rank, world_size, -1).requires_grad_(True)
    theirs = ours.detach().clone().requires_grad_(True)
    (-token_stats(ours, targets, tp_group=dist.group.WORLD).logp).sum().backward()
    loss = VocabParallelCrossEntropy.apply(theirs, targets, rank * (24 // world_size), dist.group.WORLD)
    loss.sum().backward()
    assert_rel_close(-loss, token_stats(logits, targets).logp, OUTPUT_RTOL, "Megatron logp")
    assert_rel_close(theirs.grad, ours.grad, GRAD_RTOL[torch.float32], "Megatron gradient")


POLICY_CASES = {  # cfg, actfocus, given weights?, per-sequence advantages?
    "actfocus-current": (PolicyLossConfig(kl_coef=0.05, entropy_coef=0.01, temperature=0.9),
                         ActFocusConfig(source="current"), False, False),
    "given-weights": (PolicyLossConfig(dual_clip=2.0, agg="seq-mean-token-mean"), None, True, False),
    "gspo-actfocus": (PolicyLossConfig(policy="gspo", clip_low=0.05, clip_high=0.08),
                      ActFocusConfig(source="current", uncertainty="entropy"), False, True),
    # a random token choice: the same on every rank with a generator seeded alike (docs/tensor_parallel.md)
    "clip-cov": (PolicyLossConfig(policy="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=0.0), None, False, False),
}
OUTPUTS = ("logp", "energy", "entropy", "weights", "clip_frac", "approx_kl", "entropy_mean", "energy_mean_action",
           "energy_mean_reasoning")


def policy_batch(case: str, vocab: int):
    cfg, actfocus, given, per_seq = POLICY_CASES[case]
    batch = make_batch(3, 6, vocab, seed=len(case), per_seq_advantages=per_seq)
    batch["targets"][1, 2] = cfg.ignore_index
    if given:
        batch["weights"] = torch.rand(3, 6, generator=torch.Generator().manual_seed(9)) * 2
    return batch, cfg, actfocus


def loss_arguments(batch, cfg, actfocus):
    return dict(weights=batch.get("weights"), action_mask=batch["action_mask"], ref_logp=batch["ref_logp"], cfg=cfg,
                actfocus=actfocus, generator=torch.Generator().manual_seed(0))


def same_on_every_rank(value: torch.Tensor, name: str) -> None:
    gathered = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, value.contiguous())
    assert all(torch.equal(x, gathered[0]) for x in gathered), f"{name} differs between ranks"


def compare_loss_outputs(ours, expected, mask, label: str) -> None:
    same_on_every_rank(ours.loss.detach(), f"{label} loss")
    assert_rel_close(ours.loss, expected.loss, OUTPUT_RTOL, f"{label} loss")
    for name in OUTPUTS:
        assert_rel_close(getattr(ours, name), getattr(expected, name), OUTPUT_RTOL, f"{label} {name}")
    assert_rel_close(ours.ratio[mask], expected.ratio[mask], OUTPUT_RTOL, f"{label} ratio")
    assert torch.equal(ours.clipped, expected.clipped), f"{label} clipped"


def check_policy_loss(rank, world_size, backend, case):
    vocab = 24
    batch, cfg, actfocus = policy_batch(case, vocab)
    args = (batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"])
    full = batch["logits"].clone().requires_grad_(True)
    expected = policy_loss(full, *args, **loss_arguments(batch, cfg, actfocus), backend=backend)
    expected.loss.backward()
    shard = block(batch["logits"], rank, world_size, -1).requires_grad_(True)
    with counted_collectives() as calls:
        ours = policy_loss(shard, *args, **loss_arguments(batch, cfg, actfocus), backend=backend,
                           tp_group=dist.group.WORLD)
        ours.loss.backward()
    assert calls == {"all_gather_single": 1, "all_reduce": 0}, calls
    mask = (batch["loss_mask"] > 0) & (batch["targets"] != cfg.ignore_index)
    label = f"policy_loss {case} {backend}"
    compare_loss_outputs(ours, expected, mask, label)
    assert_rel_close(shard.grad, block(full.grad, rank, world_size, -1), GRAD_RTOL[torch.float32], f"{label} grad")


def check_inplace_policy_loss(rank, world_size, backend):
    """``inplace_grad=True``: the block's buffer holds the logits until backward, then its gradient."""
    batch, cfg, actfocus = policy_batch("gspo-actfocus", 24)
    args = (batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"])
    expected_shard = block(batch["logits"], rank, world_size, -1).requires_grad_(True)
    expected = policy_loss(expected_shard, *args, **loss_arguments(batch, cfg, actfocus), backend=backend,
                           tp_group=dist.group.WORLD)
    expected.loss.backward()
    shard = block(batch["logits"], rank, world_size, -1).requires_grad_(True)
    buffer = shard.detach()
    saved_before = torch.sin(shard)
    out = policy_loss(shard, *args, **loss_arguments(batch, cfg, actfocus), backend=backend, inplace_grad=True,
                      tp_group=dist.group.WORLD)
    assert torch.equal(buffer, block(batch["logits"], rank, world_size, -1))  # the logits until backward
    out.loss.backward()
    assert shard.grad.data_ptr() == buffer.data_ptr()  # no new gradient buffer
    assert out.loss == expected.loss
    assert_rel_close(shard.grad, expected_shard.grad, 1e-6, f"inplace {backend} grad")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_before.sum().backward()


def check_linear_policy_loss(rank, world_size, backend, case):
    vocab, features = 24, 16
    batch, cfg, actfocus = policy_batch(case, vocab)
    g = torch.Generator().manual_seed(11)
    head = {"hidden": torch.randn(3, 6, features, generator=g), "weight": torch.randn(vocab, features, generator=g),
            "bias": torch.randn(vocab, generator=g)}
    args = (batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"])
    full = {k: v.clone().requires_grad_(True) for k, v in head.items()}
    expected = linear_policy_loss(full["hidden"], full["weight"], *args, bias=full["bias"], chunk_size=5,
                                  **loss_arguments(batch, cfg, actfocus), backend=backend)
    expected.loss.backward()
    ours = {"hidden": head["hidden"].clone(), "weight": block(head["weight"], rank, world_size, 0),
            "bias": block(head["bias"], rank, world_size, 0)}
    ours = {k: v.requires_grad_(True) for k, v in ours.items()}
    out = linear_policy_loss(ours["hidden"], ours["weight"], *args, bias=ours["bias"], chunk_size=5,
                             **loss_arguments(batch, cfg, actfocus), backend=backend, tp_group=dist.group.WORLD)
    out.loss.backward()
    mask = (batch["loss_mask"] > 0) & (batch["targets"] != cfg.ignore_index)
    label = f"linear_policy_loss {case} {backend}"
    compare_loss_outputs(out, expected, mask, label)
    assert_rel_close(ours["hidden"].grad, full["hidden"].grad, GRAD_RTOL[torch.float32], f"{label} hidden")
    for name in ("weight", "bias"):
        assert_rel_close(ours[name].grad, block(full[name].grad, rank, world_size, 0), GRAD_RTOL[torch.float32],
                         f"{label} {name}")


def check_packed_policy_loss(rank, world_size, backend):
    """Packed ``[N, V_l]`` rows with ``cu_seqlens`` and one advantage per sequence, GSPO."""
    batch, cfg, actfocus = policy_batch("gspo-actfocus", 24)
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items() if k != "advantages"}
    cu_seqlens = torch.tensor([0, 4, 11, 18])
    advantages = torch.tensor([0.5, -1.0, 2.0])
    args = (flat["targets"], flat["old_logp"], advantages, flat["loss_mask"])
    kwargs = dict(action_mask=flat["action_mask"], cu_seqlens=cu_seqlens, cfg=cfg, actfocus=actfocus, backend=backend)
    full = flat["logits"].clone().requires_grad_(True)
    expected = policy_loss(full, *args, **kwargs)
    expected.loss.backward()
    shard = block(flat["logits"], rank, world_size, -1).requires_grad_(True)
    ours = policy_loss(shard, *args, **kwargs, tp_group=dist.group.WORLD)
    ours.loss.backward()
    mask = (flat["loss_mask"] > 0) & (flat["targets"] != cfg.ignore_index)
    compare_loss_outputs(ours, expected, mask, f"packed policy_loss {backend}")
    assert_rel_close(shard.grad, block(full.grad, rank, world_size, -1), GRAD_RTOL[torch.float32],
                     f"packed policy_loss {backend} grad")


def check_verl_fused_forward(rank, world_size):
    """verl's fused forward patched with a tp_group on a model holding its block of the LM head
    equals the whole model's: per-token outputs, the backbone's gradients (the gradient of the
    hidden states is all-reduced) and its own rows of the head's gradient."""
    from actfocus_kernels.integrations import verl as af_verl

    from toy_lm import toy_model

    vocab = 4 * 5  # divisible by 2 and 4 ranks
    input_ids = torch.randint(3, vocab, (2, 7), generator=torch.Generator().manual_seed(5))
    coef = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(6))
    results = []
    for group in (None, dist.group.WORLD):
        model = toy_model(seed=3, vocab_size=vocab)
        if group is not None:
            head = torch.nn.Linear(model.lm_head.in_features, vocab // world_size, bias=False)
            head.weight = torch.nn.Parameter(block(model.lm_head.weight.detach(), rank, world_size, 0).clone())
            model.lm_head = head
        af_verl.patch_forward_with_actfocus(model, tp_group=group)
        out = model(input_ids=input_ids, return_dict=True, temperature=0.8)
        ((coef[0] * out.log_probs).sum() + (coef[1] * out.entropy).sum() + (coef[2] * out.energy).sum()).backward()
        results.append((model, out))
    (full, expected), (sharded, ours) = results
    for name in ("log_probs", "entropy", "energy"):
        assert_rel_close(getattr(ours, name), getattr(expected, name).detach(), OUTPUT_RTOL, f"verl forward {name}")
    for (name, param), (_, expected_param) in zip(sharded.named_parameters(), full.named_parameters()):
        expected_grad = expected_param.grad
        if name == "lm_head.weight":
            expected_grad = block(expected_grad, rank, world_size, 0)
        assert_rel_close(param.grad, expected_grad, GRAD_RTOL[torch.float32], f"verl forward grad {name}")


def check_non_finite_rows(rank, world_size, backend):
    """NaN / inf logits on one shard of a row: an inactive row gets exactly zero gradient, an active
    one a non-finite loss (SPEC sections 2 and 6), as without the group."""
    data = make_batch(3, 6, 24, seed=11)
    data["logits"][0, 1, 3] = float("nan")  # on rank 0's block
    data["logits"][1, 2, -1] = float("inf")  # on the last rank's block
    data["loss_mask"][0, 1] = data["loss_mask"][1, 2] = 0
    args = (data["targets"], data["old_logp"], data["advantages"], data["loss_mask"])
    shard = block(data["logits"], rank, world_size, -1).requires_grad_(True)
    out = policy_loss(shard, *args, backend=backend, tp_group=dist.group.WORLD)
    out.loss.backward()
    assert torch.isfinite(out.loss), "an inactive non-finite row leaked into the loss"
    assert torch.all(shard.grad[0, 1] == 0) and torch.all(shard.grad[1, 2] == 0), "inactive rows need zero gradient"
    assert torch.isfinite(shard.grad).all()
    data["loss_mask"][0, 1] = 1
    shard = block(data["logits"], rank, world_size, -1).requires_grad_(True)
    out = policy_loss(shard, *args, backend=backend, tp_group=dist.group.WORLD)
    assert not torch.isfinite(out.loss), "an active NaN row must propagate"


def check_transforms_and_extras(rank, world_size, backend):
    """SPEC 10 under tp_group: the transformed statistics, the extras (``is_top1`` decided across the
    blocks, a tie at the maximum going to the first index) and the loss with their gradients equal the
    unsharded op's; the linear path with an fp32 head too."""
    group = dist.group.WORLD
    logits, targets = stats_batch(world_size, 24, seed=8)
    logits[0, 2] *= 20  # far into the cap's saturation: ties of s across the blocks
    targets[1, 1] = int(logits[1, 1].argmax())  # a target at the row's maximum
    transform = dict(logit_scale=1.3, softcap=5.0)
    full = logits.clone().requires_grad_(True)
    expected = token_stats(full, targets, TEMPERATURE, backend, extra_stats=True, **transform)
    grads = incoming(targets.shape, 9)
    backward_of(expected[:3], grads)
    shard = block(logits, rank, world_size, -1).requires_grad_(True)
    ours = token_stats(shard, targets, TEMPERATURE, backend, extra_stats=True, tp_group=group, **transform)
    backward_of(ours[:3], grads)
    for name in ("logp", "energy", "entropy", "log_sum_sq_probs", "mean_logits"):
        assert_rel_close(getattr(ours, name), getattr(expected, name), OUTPUT_RTOL, f"tp {backend} {name}")
    assert torch.equal(ours.is_top1, expected.is_top1) and bool(expected.is_top1.any())
    assert_rel_close(shard.grad, block(full.grad, rank, world_size, -1), GRAD_RTOL[torch.float32], "tp grad")
    batch = make_batch(3, 6, 24, seed=11)
    per_token = [batch[k] for k in ("targets", "old_logp", "advantages", "loss_mask")]
    cfg = PolicyLossConfig(clip_high=0.28, temperature=TEMPERATURE)
    unsharded = policy_loss(batch["logits"], *per_token, cfg=cfg, backend=backend, **transform)
    sharded = policy_loss(block(batch["logits"], rank, world_size, -1), *per_token, cfg=cfg, backend=backend,
                          tp_group=group, **transform)
    assert_rel_close(sharded.loss, unsharded.loss, OUTPUT_RTOL, "tp loss with transform")
    g = torch.Generator().manual_seed(10)
    hidden, weight = torch.randn(2, 5, 8, generator=g).bfloat16(), torch.randn(24, 8, generator=g).bfloat16()
    whole = linear_token_stats(hidden, weight, targets, TEMPERATURE, backend=backend, extra_stats=True,
                               logits_dtype=torch.float32, **transform)
    split = linear_token_stats(hidden, block(weight, rank, world_size, 0), targets, TEMPERATURE, backend=backend,
                               extra_stats=True, logits_dtype=torch.float32, tp_group=group, **transform)
    assert_rel_close(split.logp, whole.logp, OUTPUT_RTOL, "tp linear logp")
    assert torch.equal(split.is_top1, whole.is_top1)


def every_check(rank, world_size, backends):
    for backend in backends:
        check_logits_path(rank, world_size, backend, torch.float32)
        check_linear_path(rank, world_size, backend, with_bias=True)
        # the losses reach the backend only through the statistics' kernels: one case each here,
        # every case on the last backend
        for case in POLICY_CASES if backend == backends[-1] else ("actfocus-current",):
            check_policy_loss(rank, world_size, backend, case)
            check_linear_policy_loss(rank, world_size, backend, case)
    check_packed_policy_loss(rank, world_size, backends[-1])
    check_inplace_policy_loss(rank, world_size, backends[-1])
    check_logits_path(rank, world_size, backends[-1], torch.bfloat16)
    check_linear_path(rank, world_size, backends[-1], with_bias=False)
    check_errors(rank, world_size)
    check_global_counts(rank, world_size)
    check_megatron_scheme(rank, world_size)
    check_verl_fused_forward(rank, world_size)
    for backend in backends:
        check_non_finite_rows(rank, world_size, backend)
        check_transforms_and_extras(rank, world_size, backend)
