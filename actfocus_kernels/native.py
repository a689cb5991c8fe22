"""The optional C++/CUDA extension ``actfocus_kernels._C`` (ops in namespace ``actfocus_native``).

The package works without it (reference and Triton backends); ``has_backend`` says what was built.
An extension that exists but fails to import (ABI mismatch, missing library) is not silent: its
error is kept and shown by ``build_info()["load_error"]`` and by every "backend not available"
message (``missing_reason``).
When it is built, this module registers the fake (meta) implementations of the ``actfocus_native``
ops, mirroring the C++ argument checks (csrc/glue/checks.h) with ``torch._check``, so the ops trace
under ``torch.compile`` and pass ``torch.library.opcheck``.

Schemas (csrc/torch_bindings.cpp), on rows ``logits [N, V]`` (float32/float16/bfloat16, unit stride
along V) and per-token ``[N]`` tensors (``targets`` int64, the rest float32)::

    token_stats(logits, targets, temperature, ignore_index) -> (logp, energy, entropy)
    policy_loss(logits, targets, old_logp?, advantages, ref_logp?, weights, scale, temperature,
                clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef, ignore_index,
                dlogits?) -> (token_loss, logp, energy, entropy, ratio, clipped)
    row_gradient(logits, targets, target_coef, prob_coef, entropy_coef, temperature, ignore_index,
                 dlogits!) -> ()    (the gradient pass of given per-row coefficients)
"""
from __future__ import annotations

import importlib.util
from typing import Any, Optional

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


def missing_reason(name: str) -> str:
    """Why backend ``name`` is not available: the extension's import error, or how it was built."""
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if _C is None:
        return "the actfocus_kernels C++ extension is not built (pip install . builds it)"
    return f"the actfocus_kernels extension was built without it (built: {sorted(BUILT_BACKENDS)})"


def build_info() -> dict[str, Any]:
    """What the extension contains: ``backends`` (e.g. ``["cpu", "cuda"]``; empty when not built),
    ``cuda_version`` (``"13.0"`` or None), ``archs`` (e.g. ``["sm_80", "sm_90a"]``),
    ``cpu_capability`` (``"avx2"`` or ``"default"``, the CPU kernels chosen at run time) and
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


def _check_token_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> None:
    _check_logits(logits)
    _check_per_token(targets, "targets", logits.shape[0], torch.int64, logits)
    torch._check(
        temperature > 0 and temperature != float("inf"),
        lambda: f"actfocus_native: temperature must be finite and > 0, got {temperature}",
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


def _token_stats_fake(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_token_stats(logits, targets, temperature)
    logp, energy, entropy = _per_token_outputs(logits, 3)
    return logp, energy, entropy


def _policy_loss_fake(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    ref_logp: Optional[torch.Tensor],
    weights: torch.Tensor,
    scale: torch.Tensor,
    temperature: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    kl_coef: float,
    kl_type: int,
    entropy_coef: float,
    ignore_index: int,
    dlogits: Optional[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    _check_token_stats(logits, targets, temperature)
    n = logits.shape[0]
    for name, values in (("old_logp", old_logp), ("advantages", advantages),
                         ("ref_logp", ref_logp), ("weights", weights), ("scale", scale)):
        if values is not None:
            _check_per_token(values, name, n, torch.float32, logits)
    torch._check(
        kl_type in (1, 2, 3),
        lambda: f"actfocus_native: kl_type must be 1 (k1), 2 (k2) or 3 (k3), got {kl_type}",
    )
    if dlogits is not None:
        _check_dlogits(dlogits, logits)
    token_loss, logp, energy, entropy, ratio = _per_token_outputs(logits, 5)
    clipped = logits.new_empty((n,), dtype=torch.bool)
    return token_loss, logp, energy, entropy, ratio, clipped


def _row_gradient_fake(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_coef: torch.Tensor,
    prob_coef: torch.Tensor,
    entropy_coef: torch.Tensor,
    temperature: float,
    ignore_index: int,
    dlogits: torch.Tensor,
) -> None:
    _check_token_stats(logits, targets, temperature)
    for name, values in (("target_coef", target_coef), ("prob_coef", prob_coef), ("entropy_coef", entropy_coef)):
        _check_per_token(values, name, logits.shape[0], torch.float32, logits)
    _check_dlogits(dlogits, logits)


if _C is not None:
    torch.library.register_fake("actfocus_native::token_stats")(_token_stats_fake)
    torch.library.register_fake("actfocus_native::policy_loss")(_policy_loss_fake)
    torch.library.register_fake("actfocus_native::row_gradient")(_row_gradient_fake)
