"""Public functions (SPEC section 5): validate, flatten padded ``[B, L, V]`` / packed ``[N, V]``
inputs to rows, choose the backend, call the ``actfocus`` ops, shape the results."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from . import native, ops
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# --- validation --------------------------------------------------------------------------------


def _check(condition: bool, message: str, error: type = ValueError) -> None:
    if not condition:
        raise error(message)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: CUDA tensors -> "cuda" if built else "triton"; CPU tensors -> "cpu" if built else
    "reference". An explicit backend that can't run on ``device`` is a ``ValueError``."""
    _check(backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if native.has_backend("cuda") else "triton"
        return "cpu" if native.has_backend("cpu") else "reference"
    if backend == "triton":
        _check(_triton_importable(), "backend='triton' needs the triton package")
        _check(
            device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1",
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)",
        )
    if backend in ("cpu", "cuda"):
        _check(native.has_backend(backend), f"backend={backend!r}: the actfocus_kernels extension was built without it")
        _check(device.type == backend, f"backend={backend!r} needs {backend} tensors, got {device.type}")
    return backend


def _check_tensor(name: str, value, shape: Optional[tuple], device: torch.device, floating: bool = True) -> None:
    _check(isinstance(value, Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}", TypeError)
    _check(value.device == device, f"{name} is on {value.device}, logits on {device}")
    if floating:
        _check(value.is_floating_point(), f"{name} must be a floating tensor, got {value.dtype}", TypeError)
    if shape is not None:
        _check(tuple(value.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def _check_targets(targets: Tensor, vocab: int, ignore_index: int) -> None:
    _check(not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool,
           f"targets must be an integer tensor, got {targets.dtype}", TypeError)
    if torch.compiler.is_compiling() or targets.numel() == 0:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target {int(targets[index])} at position {index} is outside [0, {vocab}) "
            f"and is not ignore_index={ignore_index}"
        )


@dataclass
class _Rows:
    """The input (logits ``[.., V]``, or hidden states ``[.., H]`` on the linear path) as rows
    ``[N, D]`` plus the sequence structure of the tokens."""

    flat: Tensor  # [N, D], unit stride in D
    token_shape: tuple  # shape of targets and per-token outputs
    seq_ids: Tensor  # [N] int64
    num_seqs: int
    padded_len: int


def _rows(values: Tensor, targets: Tensor, cu_seqlens: Optional[Tensor], backend: str, need_view: bool = False,
          name: str = "logits") -> _Rows:
    """Flatten ``values [B, L, D]`` (a sequence per row) or packed ``[N, D]`` (one sequence, or the
    sequences ``cu_seqlens [S + 1]`` delimits); ``name`` is "logits" (D = V) or "hidden" (D = H)."""
    dim, dim_name = ("V", "vocabulary") if name == "logits" else ("H", "feature")
    _check(isinstance(values, Tensor), f"{name} must be a torch.Tensor, got {type(values).__name__}", TypeError)
    _check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    _check(values.dim() in (2, 3),
           f"{name} must be [B, L, {dim}] or packed [N, {dim}], got shape {tuple(values.shape)}")
    allowed = KERNEL_DTYPES + ((torch.float64,) if backend == "reference" else ())
    _check(values.dtype in allowed, f"{name} dtype {values.dtype} is not supported by backend {backend!r} "
           f"(use one of {allowed})", TypeError)
    width = values.shape[-1]
    _check(width > 0, f"{name}: empty {dim_name} dimension, shape {tuple(values.shape)}")
    _check(targets.device == values.device, f"targets are on {targets.device}, {name} on {values.device}")
    _check(tuple(targets.shape) == tuple(values.shape[:-1]),
           f"targets must have shape {tuple(values.shape[:-1])}, got {tuple(targets.shape)}")
    device = values.device
    if values.dim() == 3:
        _check(cu_seqlens is None, f"cu_seqlens is for packed [N, {dim}] {name}, got [B, L, {dim}]")
        batch, length = targets.shape
        seq_ids = torch.arange(batch, device=device).repeat_interleave(length)
        num_seqs, padded_len = batch, length
    elif cu_seqlens is None:
        seq_ids = torch.zeros(targets.shape[0], dtype=torch.int64, device=device)
        num_seqs, padded_len = 1, targets.shape[0]
    else:
        _check_tensor("cu_seqlens", cu_seqlens, None, device, floating=False)
        _check(cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 2, "cu_seqlens must be 1-D [S + 1]")
        lengths = cu_seqlens.diff()
        if not torch.compiler.is_compiling():
            _check(int(cu_seqlens[0]) == 0 and int(cu_seqlens[-1]) == targets.shape[0] and bool((lengths >= 0).all()),
                   f"cu_seqlens must rise from 0 to N={targets.shape[0]}, got {cu_seqlens.tolist()}")
        num_seqs = cu_seqlens.numel() - 1
        seq_ids = torch.arange(num_seqs, device=device).repeat_interleave(lengths, output_size=targets.shape[0])
        padded_len = int(lengths.max()) if num_seqs > 0 and targets.shape[0] > 0 else 1
    if values.stride(-1) != 1:
        _check(not need_view, "inplace_grad=True needs logits with unit stride in the vocabulary dimension")
        values = values.contiguous()
    try:
        flat = values.view(-1, width)
    except RuntimeError:
        _check(not need_view, "inplace_grad=True needs logits whose rows can be viewed as [N, V] without a copy")
        flat = values.reshape(-1, width)
    return _Rows(flat, tuple(targets.shape), seq_ids, num_seqs, padded_len)


def _per_token(name: str, value: Optional[Tensor], rows: _Rows, device: torch.device) -> Optional[Tensor]:
    """A per-token input shaped like the targets -> flat ``[N]``."""
    if value is None:
        return None
    _check(isinstance(value, Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}", TypeError)
    _check_tensor(name, value, rows.token_shape, device, floating=False)
    return value.reshape(-1)


def _float_per_token(name: str, value: Optional[Tensor], rows: _Rows, device: torch.device) -> Optional[Tensor]:
    if value is None:
        return None
    _check_tensor(name, value, rows.token_shape, device)
    return value.reshape(-1).to(torch.float32).contiguous()


def _advantages(advantages: Tensor, rows: _Rows, device: torch.device) -> Tensor:
    """Per token, or one per sequence (``[B]`` padded, ``[S]`` packed) broadcast over its tokens."""
    _check_tensor("advantages", advantages, None, device)
    if tuple(advantages.shape) == rows.token_shape:
        flat = advantages.reshape(-1)
    else:
        _check(advantages.dim() == 1 and advantages.shape[0] == rows.num_seqs,
               f"advantages must have shape {rows.token_shape} (per token) or [{rows.num_seqs}] "
               f"(per sequence), got {tuple(advantages.shape)}")
        flat = advantages[rows.seq_ids]
    return flat.to(torch.float32).contiguous()


def _loss_scale(mask: Tensor, rows: _Rows, cfg: PolicyLossConfig) -> Tensor:
    """``d loss / d l_t`` for the aggregation mode ``cfg.agg`` (SPEC section 4), zero off the mask."""
    weight = mask.to(torch.float32)
    if cfg.agg == "token-mean":
        denominator = cfg.norm_tokens if cfg.norm_tokens is not None else weight.sum().clamp(min=1.0)
        return weight / denominator
    if cfg.agg == "seq-mean-token-mean":
        per_seq = torch.zeros(rows.num_seqs, device=weight.device).index_add_(0, rows.seq_ids, weight)
        num_seqs = (per_seq > 0).sum().clamp(min=1)
        return weight / (per_seq.clamp(min=1.0)[rows.seq_ids] * num_seqs)
    if cfg.agg == "seq-mean-token-sum":
        return weight / max(rows.num_seqs, 1)
    norm_len = cfg.norm_len if cfg.norm_len is not None else rows.padded_len
    return weight / (max(rows.num_seqs, 1) * norm_len)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


# --- public functions --------------------------------------------------------------------------


def token_stats(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, backend: str = "auto", *, ignore_index: int = -100
) -> TokenStats:
    """Per-token ``logp``, ``energy`` and ``entropy`` of ``logits [..., V]`` in one read, no grad.

    With ``s = z / T``: ``lse = logsumexp(s)``, ``logp = s[y] - lse`` (0 where ``y == ignore_index``),
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v`` (SPEC section 2). Outputs are fp32 and
    shaped like ``targets`` (``logits.shape[:-1]``).
    """
    _check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
    _check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    _check(temperature > 0, f"temperature must be > 0, got {temperature}")
    _check(logits.dim() >= 1, "logits must have a vocabulary dimension")
    batch_shape = tuple(logits.shape[:-1])
    _check(tuple(targets.shape) == batch_shape, f"targets must have shape {batch_shape}, got {tuple(targets.shape)}")
    backend = resolve_backend(backend, logits.device)
    rows = _rows(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), None, backend)
    _check_targets(targets, logits.shape[-1], ignore_index)
    flat_targets = targets.reshape(-1).to(torch.int64).contiguous()
    stats = torch.ops.actfocus.token_stats(rows.flat.detach(), flat_targets, float(temperature), int(ignore_index), backend)
    return TokenStats(*(x.view(batch_shape) for x in stats))


def _uncertainty(stats: TokenStats, kind: str) -> Tensor:
    return {"energy": stats.energy, "entropy": stats.entropy, "nll": -stats.logp}[kind]


def _weights_on_rows(uncertainty: Tensor, mask: Tensor, action: Tensor, rows: _Rows, turn_ids: Optional[Tensor],
                     cfg: ActFocusConfig) -> Tensor:
    if cfg.scope == "turn":
        _check(turn_ids is not None, "ActFocusConfig(scope='turn') needs turn_ids")
    return torch.ops.actfocus.actfocus_weights(
        uncertainty.detach().reshape(-1), mask, action, rows.seq_ids,
        turn_ids if cfg.scope == "turn" else None, float(cfg.reasoning_weight), float(cfg.action_weight),
        float(cfg.redistribution), float(cfg.energy_temperature), float(cfg.max_weight), bool(cfg.preserve_total),
    )


def actfocus_weights(
    stats: TokenStats,
    loss_mask: Tensor,
    action_mask: Tensor,
    cfg: ActFocusConfig = ActFocusConfig(),
    turn_ids: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """ActFocus weights (SPEC section 3) from per-token statistics and masks, detached fp32.

    Masks are ``[B, L]`` (a scope per row, or per turn with ``turn_ids``) or packed ``[N]`` with
    ``cu_seqlens [S + 1]``; the uncertainty is ``stats.energy``, ``stats.entropy`` or ``-stats.logp``
    as ``cfg.uncertainty`` says. Returns weights shaped like the masks.
    """
    _check(isinstance(stats, tuple) and len(stats) == 3, "stats must be a TokenStats(logp, energy, entropy)", TypeError)
    _check(isinstance(cfg, ActFocusConfig), f"cfg must be an ActFocusConfig, got {type(cfg).__name__}", TypeError)
    uncertainty = _uncertainty(TokenStats(*stats), cfg.uncertainty)
    _check(isinstance(uncertainty, Tensor) and uncertainty.dim() in (1, 2),
           "stats tensors must be [B, L] or packed [N]", TypeError)
    device = uncertainty.device
    shape = tuple(uncertainty.shape)
    # A stand-in [.., 1] logits tensor gives the token structure without any vocabulary.
    rows = _rows(uncertainty.new_zeros(shape + (1,), dtype=torch.float32), uncertainty.new_zeros(shape, dtype=torch.int64),
                 cu_seqlens, "reference")
    mask = _per_token("loss_mask", loss_mask, rows, device).bool()
    action = _per_token("action_mask", action_mask, rows, device).bool()
    turns = _per_token("turn_ids", turn_ids, rows, device)
    return _weights_on_rows(uncertainty, mask, action, rows, turns, cfg).view(shape)


@dataclass
class _LossInputs:
    """A policy loss's per-token inputs on rows, validated: ``row_args`` are the arguments of the
    row-kernel contract after the logits (``targets ... ignore_index``, see ``ops``); ``mask`` is the
    loss mask with ignored targets removed; ``weights`` the token weights before masking."""

    row_args: tuple
    mask: Tensor
    action: Tensor
    old_logp: Optional[Tensor]
    weights: Tensor


CurrentStats = Callable[[Tensor, Tensor], TokenStats]


def _check_loss_configs(cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig]) -> None:
    _check(isinstance(cfg, PolicyLossConfig), f"cfg must be a PolicyLossConfig, got {type(cfg).__name__}", TypeError)
    _check(actfocus is None or isinstance(actfocus, ActFocusConfig),
           f"actfocus must be an ActFocusConfig or None, got {type(actfocus).__name__}", TypeError)


def _loss_inputs(
    rows: _Rows, targets: Tensor, vocab: int, old_logp: Optional[Tensor], advantages: Tensor, loss_mask: Tensor,
    weights: Optional[Tensor], action_mask: Optional[Tensor], ref_logp: Optional[Tensor],
    turn_ids: Optional[Tensor], cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig],
    current_stats: CurrentStats,
) -> _LossInputs:
    """Validate and flatten the per-token inputs of ``policy_loss`` / ``linear_policy_loss``.

    ``current_stats(flat_targets, selected)`` returns the current policy's ``TokenStats`` on the
    rows (needed on the ``selected`` ones, the masked action tokens, at least) for
    ``ActFocusConfig(source="current")``.
    """
    device = rows.flat.device
    _check_targets(targets, vocab, cfg.ignore_index)
    flat_targets = targets.reshape(-1).to(torch.int64).contiguous()
    mask = _per_token("loss_mask", loss_mask, rows, device).bool() & (flat_targets != cfg.ignore_index)
    action = _per_token("action_mask", action_mask, rows, device)
    action = action.bool() if action is not None else torch.zeros_like(mask)
    turns = _per_token("turn_ids", turn_ids, rows, device)
    old = _float_per_token("old_logp", old_logp, rows, device)
    ref = _float_per_token("ref_logp", ref_logp, rows, device)
    _check(cfg.kl_coef == 0 or ref is not None, "cfg.kl_coef > 0 needs ref_logp")
    flat_advantages = _advantages(advantages, rows, device)

    flat_weights = _float_per_token("weights", weights, rows, device)
    if actfocus is not None:
        _check(action_mask is not None, "actfocus weighting needs action_mask")
        if actfocus.source == "current":
            _check(weights is None, "pass either weights or actfocus=ActFocusConfig(source='current'), not both")
            stats = current_stats(flat_targets, mask & action)
            flat_weights = _weights_on_rows(_uncertainty(stats, actfocus.uncertainty), mask, action, rows, turns, actfocus)
        elif flat_weights is None:
            _check(actfocus.uncertainty == "nll" and old is not None,
                   "ActFocusConfig(source='old') needs weights=actfocus_weights(token_stats(old_logits, targets), "
                   "loss_mask, action_mask, cfg) (only uncertainty='nll' can use old_logp directly)")
            flat_weights = _weights_on_rows(-old, mask, action, rows, turns, actfocus)
    if flat_weights is None:
        flat_weights = torch.ones(mask.shape, dtype=torch.float32, device=device)

    scale = _loss_scale(mask, rows, cfg)
    row_args = (
        flat_targets, old, flat_advantages, ref if cfg.kl_coef > 0 else None, flat_weights, scale,
        float(cfg.temperature), float(cfg.clip_low), float(cfg.clip_high), float(cfg.dual_clip or 0.0),
        float(cfg.kl_coef), ops.KL_TYPE_IDS[cfg.kl_type], float(cfg.entropy_coef), int(cfg.ignore_index),
    )
    return _LossInputs(row_args, mask, action, old, flat_weights)


def _loss_output(loss: Tensor, logp: Tensor, energy: Tensor, entropy: Tensor, ratio: Tensor, clipped: Tensor,
                 rows: _Rows, inputs: _LossInputs) -> PolicyLossOutput:
    """Per-token row outputs shaped like the targets, plus the masked scalar metrics (SPEC 4)."""
    mask, action = inputs.mask, inputs.action
    old_for_kl = inputs.old_logp if inputs.old_logp is not None else logp
    shape = rows.token_shape
    return PolicyLossOutput(
        loss=loss,
        logp=logp.view(shape),
        energy=energy.view(shape),
        entropy=entropy.view(shape),
        ratio=ratio.view(shape),
        clipped=clipped.view(shape),
        weights=torch.where(mask, inputs.weights, 0.0).view(shape),
        clip_frac=_masked_mean(clipped.to(torch.float32), mask),
        approx_kl=_masked_mean(old_for_kl - logp, mask),
        entropy_mean=_masked_mean(entropy, mask),
        energy_mean_action=_masked_mean(energy, mask & action),
        energy_mean_reasoning=_masked_mean(energy, mask & ~action),
    )


def policy_loss(
    logits: Tensor,
    targets: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    weights: Optional[Tensor] = None,
    action_mask: Optional[Tensor] = None,
    ref_logp: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    turn_ids: Optional[Tensor] = None,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    actfocus: Optional[ActFocusConfig] = None,
    inplace_grad: bool = False,
    backend: str = "auto",
) -> PolicyLossOutput:
    """Clipped PPO/GRPO policy loss with optional ActFocus weights, KL and entropy terms (SPEC 4).

    ``logits [B, L, V]`` (per-token inputs ``[B, L]``, advantages ``[B, L]`` or ``[B]``) or packed
    ``[N, V]`` with ``cu_seqlens [S + 1]`` (per-token ``[N]``, advantages ``[N]`` or ``[S]``).
    Token loss ``l = w L_pg + kl_coef KL - entropy_coef H`` with ``r = exp(clamp(logp - old_logp,
    -20, 20))``, ``L_pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (dual clip where
    ``A < 0``), aggregated over ``loss_mask`` (targets equal to ``ignore_index`` are masked) by
    ``cfg.agg``. Weights ``w``: ``weights`` if given, else from ``actfocus`` (``source="current"``:
    the current logits' statistics; ``source="old"``: needs ``weights`` precomputed by
    ``actfocus_weights(token_stats(old_logits, ...), ...)``, except ``uncertainty="nll"`` which
    uses ``-old_logp``), else 1. With ``inplace_grad=True`` the gradient overwrites the logits.
    """
    _check_loss_configs(cfg, actfocus)
    _check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
    backend = resolve_backend(backend, logits.device)
    rows = _rows(logits, targets, cu_seqlens, backend, need_view=inplace_grad)

    def current_stats(flat_targets: Tensor, selected: Tensor) -> TokenStats:
        return TokenStats(*torch.ops.actfocus.token_stats(
            rows.flat.detach(), flat_targets, float(cfg.temperature), int(cfg.ignore_index), backend))

    inputs = _loss_inputs(rows, targets, logits.shape[-1], old_logp, advantages, loss_mask, weights, action_mask,
                          ref_logp, turn_ids, cfg, actfocus, current_stats)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if inplace_grad and compute_grad:
        outputs = ops.InplaceGradPolicyLoss.apply(rows.flat, *inputs.row_args, backend)
    else:
        outputs = torch.ops.actfocus.policy_loss(rows.flat, *inputs.row_args, compute_grad, backend)[:6]
    return _loss_output(*outputs, rows, inputs)
