"""The optional C++/CUDA extension ``actfocus_kernels._C`` (ops in namespace ``actfocus_native``).

The package works without it (reference and Triton backends); ``has_backend`` says what was built.
An extension that exists but fails to import (ABI mismatch, missing library) is not silent: its
error is kept and shown by ``build_info()["load_error"]`` and by every "backend not available"
message (``missing_reason``).
When it is built, this module registers the fake (meta) implementations of the ``actfocus_native``
ops, mirroring the C++ argument checks (csrc/glue/checks.h) with ``torch._check``, so the ops trace
under ``torch.compile`` and pass ``torch.library.opcheck``. Each fake is bound by name to its op's
schema (``_register_fake``): the argument lists are written once, in csrc/torch_bindings.cpp.

Schemas (csrc/torch_bindings.cpp), on rows ``logits [N, V]`` (float32/float16/bfloat16, unit stride
along V) and per-token ``[N]`` tensors (``targets`` int64, the rest float32), with the logit transform
of SPEC section 10 (``logit_scale`` > 0, 1: off; ``softcap`` >= 0, 0: off)::

    token_stats(logits, targets, temperature, ignore_index, logit_scale, softcap, extra_stats)
        -> (logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1)
        (the last three [N], or empty [0] tensors without extra_stats)
    policy_loss(logits, targets, old_logp?, advantages, ref_logp?, weights, scale, temperature,
                logit_scale, softcap, clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef,
                ignore_index, dlogits?) -> (token_loss, logp, energy, entropy, ratio, clipped)
    row_gradient(logits, targets, target_coef, prob_coef, centred_coef, temperature, logit_scale,
                 softcap, ignore_index, dlogits!) -> ()    (the gradient pass of given per-row coefficients)
"""
from __future__ import annotations

import importlib.util
import inspect
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch

try:
    from . import _C

    LOAD_ERROR: Optional[str] = None
except ImportError as error:  # not built, or built but not loadable here
    _C = None
    LOAD_ERROR = (f"actfocus_kernels._C exists but failed to import: {type(error).__name__}: {error}"
                  if importlib.util.find_spec(f"{__package__}._C") is not None else None)

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Read once at import so that backend selection stays traceable by torch.compile.
BUILT_BACKENDS = frozenset(_C.build_info()["backends"]) if _C is not None else frozenset()


def has_backend(name: str) -> bool:
    """True when the extension was built with backend ``name`` ("cpu" or "cuda")."""
    return name in BUILT_BACKENDS


# README "Install": torch first, then the package built against it (no isolated build, which has no torch)
REINSTALL = ("pip install --no-build-isolation --no-deps --force-reinstall <your clone or git URL> "
             "(torch, setuptools, wheel and ninja installed first; README \"Install\")")


def missing_reason(name: str) -> str:
    """Why backend ``name`` is not available (the extension's import error, or how it was built) and
    the command that builds it."""
    if LOAD_ERROR is not None:
        return f"{LOAD_ERROR}; rebuild it against this torch: {REINSTALL}"
    if _C is None:
        return ("the actfocus_kernels C++ extension is not built: this is a pure-Python install (pip builds "
                "`pip install .` in an isolated environment without torch, or ACTFOCUS_NATIVE=0 was set); "
                f"build it: {REINSTALL}")
    return (f"the actfocus_kernels extension was built without it (built: {sorted(BUILT_BACKENDS)}; the CUDA "
            "kernels need a CUDA build of torch and a CUDA toolkit, nvcc, of the same major at build time); "
            f"build it: {REINSTALL}")


def build_info() -> dict[str, Any]:
    """What the extension contains: ``backends`` (e.g. ``["cpu", "cuda"]``; empty when not built),
    ``cuda_version`` (``"13.0"`` or None), ``archs`` (e.g. ``["sm_80", "sm_90a"]``),
    ``cpu_capability`` (``"avx512"``, ``"avx2"`` or ``"default"``, the CPU kernels chosen at run time) and
    ``load_error`` (None, or why an extension that exists failed to import)."""
    if _C is None:
        return {"backends": [], "cuda_version": None, "archs": [], "cpu_capability": None, "load_error": LOAD_ERROR}
    return {**_C.build_info(), "load_error": None}


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    torch._check(
        logits.dim() == 2,
        lambda: f"actfocus_native: {name} must be 2-D [N, V], got shape {tuple(logits.shape)}",
    )
    torch._check(
        logits.dtype in LOGITS_DTYPES,
        lambda: f"actfocus_native: {name} must be float32, float16 or bfloat16, got {logits.dtype}",
    )
    torch._check(
        logits.shape[1] >= 1,
        lambda: f"actfocus_native: {name} must have a vocabulary of size >= 1",
    )
    torch._check(
        logits.shape[1] == 1 or logits.stride(1) == 1,
        lambda: f"actfocus_native: {name} must be contiguous along the vocabulary (stride 1), "
        f"got strides {logits.stride()}",
    )


def _check_per_token(
    values: torch.Tensor, name: str, n: Any, dtype: torch.dtype, logits: torch.Tensor
) -> None:
    torch._check(
        values.device == logits.device,
        lambda: f"actfocus_native: {name} must be on {logits.device} like logits, got {values.device}",
    )
    torch._check(
        values.dim() == 1 and values.shape[0] == n,
        lambda: f"actfocus_native: {name} must have shape [{n}] (one entry per logits row), "
        f"got {tuple(values.shape)}",
    )
    torch._check(
        values.dtype == dtype,
        lambda: f"actfocus_native: {name} must be {dtype}, got {values.dtype}",
    )


def _check_rows(args: SimpleNamespace) -> None:
    _check_logits(args.logits)
    _check_per_token(args.targets, "targets", args.logits.shape[0], torch.int64, args.logits)
    for name, value, low in (("temperature", args.temperature, "> 0"), ("logit_scale", args.logit_scale, "> 0"),
                             ("softcap", args.softcap, ">= 0 (0: off)")):
        in_range = value > 0 if low == "> 0" else value >= 0
        torch._check(
            in_range and value != float("inf"),
            lambda name=name, value=value, low=low: f"actfocus_native: {name} must be finite and {low}, got {value}",
        )


def _check_dlogits(dlogits: torch.Tensor, logits: torch.Tensor) -> None:
    _check_logits(dlogits, "dlogits")
    torch._check(
        dlogits.device == logits.device,
        lambda: f"actfocus_native: dlogits must be on {logits.device} like logits, got {dlogits.device}",
    )
    torch._check(
        dlogits.shape == logits.shape,
        lambda: f"actfocus_native: dlogits must have the shape of logits {tuple(logits.shape)}, "
        f"got {tuple(dlogits.shape)}",
    )
    torch._check(
        dlogits.dtype == logits.dtype,
        lambda: f"actfocus_native: dlogits must have the dtype of logits ({logits.dtype}), got {dlogits.dtype}",
    )


def _per_token_outputs(logits: torch.Tensor, count: int) -> list[torch.Tensor]:
    return [logits.new_empty((logits.shape[0],), dtype=torch.float32) for _ in range(count)]


def _token_stats_fake(args: SimpleNamespace) -> tuple[torch.Tensor, ...]:
    _check_rows(args)
    logp, energy, entropy = _per_token_outputs(args.logits, 3)
    extra = args.logits.shape[0] if args.extra_stats else 0
    log_sum_sq_probs, mean_logits = (args.logits.new_empty((extra,), dtype=torch.float32) for _ in range(2))
    is_top1 = args.logits.new_empty((extra,), dtype=torch.bool)
    return logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1


def _policy_loss_fake(args: SimpleNamespace) -> tuple[torch.Tensor, ...]:
    _check_rows(args)
    n = args.logits.shape[0]
    for name in ("old_logp", "advantages", "ref_logp", "weights", "scale"):
        values = getattr(args, name)
        if values is not None:
            _check_per_token(values, name, n, torch.float32, args.logits)
    torch._check(
        args.kl_type in (1, 2, 3),
        lambda: f"actfocus_native: kl_type must be 1 (k1), 2 (k2) or 3 (k3), got {args.kl_type}",
    )
    if args.dlogits is not None:
        _check_dlogits(args.dlogits, args.logits)
    token_loss, logp, energy, entropy, ratio = _per_token_outputs(args.logits, 5)
    clipped = args.logits.new_empty((n,), dtype=torch.bool)
    return token_loss, logp, energy, entropy, ratio, clipped


def _row_gradient_fake(args: SimpleNamespace) -> None:
    _check_rows(args)
    for name in ("target_coef", "prob_coef", "centred_coef"):
        _check_per_token(getattr(args, name), name, args.logits.shape[0], torch.float32, args.logits)
    _check_dlogits(args.dlogits, args.logits)


def schema_argument_names(op: str) -> list[str]:
    """The argument names of ``actfocus_native::<op>`` in its schema's order (the extension must be built)."""
    return [argument.name for argument in getattr(torch.ops.actfocus_native, op).default._schema.arguments]


def _register_fake(op: str, body: Callable[[SimpleNamespace], Any]) -> None:
    """Registers ``body(args)`` as the fake of ``actfocus_native::<op>``, its arguments bound by the
    schema's names (``args.logits``, ...): no parameter list is written here."""
    names = schema_argument_names(op)

    def fake(*args: Any, **kwargs: Any) -> Any:
        return body(SimpleNamespace(**dict(zip(names, args)), **kwargs))

    fake.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names])
    torch.library.register_fake(f"actfocus_native::{op}")(fake)


if _C is not None:
    _register_fake("token_stats", _token_stats_fake)
    _register_fake("policy_loss", _policy_loss_fake)
    _register_fake("row_gradient", _row_gradient_fake)
