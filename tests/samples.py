"""Sample arguments of every registered op, ``actfocus::*`` and ``actfocus_native::*`` (the pattern
of PyTorch's extension-cpp ``sample_inputs``): ``tests/test_ops.py`` runs ``torch.library.opcheck``
and ``torch.compile(fullgraph=True)`` on each, and fails when a registered op has none."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from actfocus_kernels.contract import RowLossInputs

from judge import make_batch

IGNORE = -100
# opcheck's default checks; policy_loss's gradient is an exact closed form, so no gradcheck anywhere
DEFAULT_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# a mutating op cannot register autograd (its autograd is an autograd.Function in the API layer)
MUTATING_CHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


@dataclass
class Sample:
    """One call of an op: ``op(*args, **kwargs)``, checked by the ``opcheck`` tests in ``checks``."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    checks: tuple = DEFAULT_CHECKS


def row_inputs(n: int, vocab: int, device, seed: int, *, with_old=True, with_ref=True, **options) -> dict[str, Any]:
    """Rows ``logits [n, vocab]`` and the fields of a ``RowLossInputs`` (every clip branch on both sides)."""
    batch = make_batch(1, n, vocab, device=device, seed=seed)
    mask = batch["loss_mask"].reshape(-1)
    parameters = dict(temperature=0.9, logit_scale=1.0, softcap=0.0, clip_low=0.2, clip_high=0.28, dual_clip=3.0,
                      kl_coef=0.1, kl_type=3,
                      entropy_coef=0.01, ignore_index=IGNORE) | options
    row = RowLossInputs(
        targets=batch["targets"].reshape(-1), old_logp=batch["old_logp"].reshape(-1) if with_old else None,
        advantages=batch["advantages"].reshape(-1), ref_logp=batch["ref_logp"].reshape(-1) if with_ref else None,
        weights=torch.rand(n, device=device) + 0.5, scale=mask / mask.sum(), **parameters)
    return {"logits": batch["logits"].reshape(n, vocab), "row": row, "batch": batch}


# the logit transform of SPEC 10 (logit_scale, softcap) and the extras: the defaults, and every option on
# for the backends that implement them (the native kernels of this branch refuse them: ops/routing.py)
DEFAULT_TRANSFORM = {"logit_scale": 1.0, "softcap": 0.0}
TRANSFORMED = {"logit_scale": 0.8, "softcap": 5.0}


def transforms(backend: str) -> list[dict]:
    """The transform options sampled for every backend: ``{logit_scale, softcap}``."""
    return [DEFAULT_TRANSFORM, TRANSFORMED]


def _token_stats(device, backend):
    for transform in transforms(backend):
        extra_stats = transform is TRANSFORMED
        for requires_grad in (False, True):
            rows = row_inputs(6, 64, device, seed=1)
            logits = rows["logits"].detach().requires_grad_(requires_grad)
            yield Sample((logits, rows["row"].targets, 0.8, IGNORE),
                         {**transform, "extra_stats": extra_stats, "backend": backend})


def _policy_loss(device, backend):
    for transform in transforms(backend):
        for compute_grad, seed in ((True, 2), (False, 3)):
            rows = row_inputs(6, 64, device, seed=seed, **transform)
            logits = rows["logits"].detach().requires_grad_(compute_grad)
            yield Sample((logits,), {**rows["row"].as_kwargs(), "compute_grad": compute_grad, "backend": backend})


def _policy_loss_inplace(device, backend):
    for transform in transforms(backend):
        rows = row_inputs(6, 64, device, seed=4, with_old=False, **transform)
        yield Sample((rows["logits"].clone(),), {**rows["row"].as_kwargs(), "backend": backend}, MUTATING_CHECKS)


def _actfocus_weights(device, backend):
    batch = make_batch(2, 5, 16, device=device, seed=5)
    for turn_ids in (None, batch["turn_ids"].reshape(-1)):
        yield Sample((torch.randn(10, device=device), batch["loss_mask"].reshape(-1).bool(),
                      batch["action_mask"].reshape(-1).bool(), torch.arange(2, device=device).repeat_interleave(5),
                      turn_ids, 0.5, 1.0, 1.0, 1.0, 5.0, True))


def _linear_head(n: int, hidden_size: int, vocab: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    return tuple(x.to(device) for x in (torch.randn(n, hidden_size, generator=g),
                                        torch.randn(vocab, hidden_size, generator=g) / hidden_size ** 0.5,
                                        torch.randn(vocab, generator=g)))


def _linear_token_stats(device, backend):
    head = _linear_head(6, 24, 40, device, seed=6)
    rows = row_inputs(6, 40, device, seed=6)
    cases = [(DEFAULT_TRANSFORM, None, False, None), (DEFAULT_TRANSFORM, "selected", False, None),
             (DEFAULT_TRANSFORM, None, True, None), (TRANSFORMED, None, True, torch.float32),
             (TRANSFORMED, "selected", False, torch.float32)]
    for transform, selected, requires_grad, logits_dtype in cases:
        params = tuple(x.detach().clone().to(torch.bfloat16 if logits_dtype else x.dtype)
                       .requires_grad_(requires_grad) for x in head)
        mask = rows["batch"]["action_mask"].reshape(-1).bool() if selected else None
        yield Sample((*params, rows["row"].targets, mask, 0.8, IGNORE),
                     {**transform, "extra_stats": transform is TRANSFORMED, "logits_dtype": logits_dtype,
                      "chunk_size": 4, "backend": backend})


def _linear_policy_loss(device, backend):
    head = _linear_head(6, 24, 40, device, seed=7)
    cases = [(DEFAULT_TRANSFORM, None, (True, True, True)), (DEFAULT_TRANSFORM, None, (False, True, False)),
             (TRANSFORMED, torch.float32, (True, True, True))]
    for transform, logits_dtype, need in cases:
        rows = row_inputs(6, 40, device, seed=7, **transform)
        params = tuple(x.detach().clone().to(torch.bfloat16 if logits_dtype else x.dtype).requires_grad_(flag)
                       for x, flag in zip(head, need))
        yield Sample(params, {**rows["row"].as_kwargs(), "logits_dtype": logits_dtype, "chunk_size": 4,
                              "grad_hidden": need[0], "grad_weight": need[1], "grad_bias": need[2],
                              "backend": backend})


def _native_token_stats(device, backend):
    for (dtype, seed), transform in zip(((torch.float32, 8), (torch.bfloat16, 9)), transforms(backend)):
        rows = row_inputs(6, 64, device, seed=seed)
        yield Sample((rows["logits"].to(dtype), rows["row"].targets, 0.9, IGNORE, *transform.values(),
                      transform is TRANSFORMED))


def _native_policy_loss(device, backend):
    rows = row_inputs(6, 64, device, seed=10)
    yield Sample((rows["logits"],), {**rows["row"].as_kwargs(), "dlogits": None})
    yield Sample((rows["logits"],), {**rows["row"].as_kwargs(), "dlogits": torch.empty_like(rows["logits"])})
    half = row_inputs(6, 64, device, seed=11, with_old=False, with_ref=False, **TRANSFORMED)
    logits = half["logits"].to(torch.bfloat16)
    yield Sample((logits,), {**half["row"].as_kwargs(), "dlogits": torch.empty_like(logits)})


def _row_gradient(device, backend):
    rows = row_inputs(6, 64, device, seed=13)
    coefficients = [torch.randn(6, device=device) for _ in range(3)]
    for transform in transforms(backend):
        yield Sample((rows["logits"], rows["row"].targets, *coefficients, 0.9),
                     {**transform, "ignore_index": IGNORE, "backend": backend})


def _row_gradient_inplace(device, backend):
    rows = row_inputs(6, 64, device, seed=14)
    coefficients = [torch.randn(6, device=device) for _ in range(3)]
    for transform in transforms(backend):
        yield Sample((rows["logits"].clone(), rows["row"].targets, *coefficients, 0.9),
                     {**transform, "ignore_index": IGNORE, "backend": backend}, checks=MUTATING_CHECKS)


def _native_row_gradient(device, backend):
    rows = row_inputs(6, 64, device, seed=12)
    coefficients = {name: torch.randn(6, device=device) for name in ("target_coef", "prob_coef", "centred_coef")}
    for dtype, transform in zip((torch.float32, torch.bfloat16), transforms(backend)):
        logits = rows["logits"].to(dtype)
        yield Sample((logits, rows["row"].targets, *coefficients.values(), 0.9, *transform.values(), IGNORE,
                      torch.empty_like(logits)), checks=MUTATING_CHECKS)


# op -> samples(device, backend); the actfocus_native ops ignore the backend (their device picks the kernel)
SAMPLES: dict[str, Callable] = {
    "actfocus::token_stats": _token_stats,
    "actfocus::policy_loss": _policy_loss,
    "actfocus::policy_loss_inplace": _policy_loss_inplace,
    "actfocus::actfocus_weights": _actfocus_weights,
    "actfocus::row_gradient": _row_gradient,
    "actfocus::row_gradient_inplace": _row_gradient_inplace,
    "actfocus::linear_token_stats": _linear_token_stats,
    "actfocus::linear_policy_loss": _linear_policy_loss,
    "actfocus_native::token_stats": _native_token_stats,
    "actfocus_native::policy_loss": _native_policy_loss,
    "actfocus_native::row_gradient": _native_row_gradient,
}
NATIVE_PREFIX = "actfocus_native::"


def registered_ops() -> list[str]:
    """Every op registered in the ``actfocus`` and ``actfocus_native`` namespaces."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names()
                  if name.split("::")[0] in ("actfocus", "actfocus_native"))


def op_of(qualname: str):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name).default
