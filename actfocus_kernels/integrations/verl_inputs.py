"""The verl drop-in's input checks: verl's policy-loss tensors and ``config.global_batch_info``,
each either read as verl reads it or rejected with an error naming the argument and the expected
shape (verl itself would fail with a raw torch error, or reshape silently after a flatten).

Shapes, with ``[B, L]`` = ``[batch, response_length]`` the shape ``log_prob``, ``old_log_prob`` and
``response_mask`` share:

- ``log_prob``, ``old_log_prob``, ``response_mask``: ``[B, L]``; ``response_mask`` non-negative and
  finite (it multiplies the token losses, as in verl's ``agg_loss``);
- ``advantages``, ``rollout_is_weights``: ``[B, L]``, or per sequence ``[B, 1]``, broadcast along the
  response as verl's elementwise products broadcast it. A transposed ``[L, B]``, a flat ``[B * L]``
  or a ``[B]`` tensor is an error (for ``B == L`` a transposed tensor cannot be told apart).

``global_batch_info``: ``dp_size`` a positive integer (absent: 1); ``batch_num_tokens``,
``global_batch_size`` and ``loss_scale_factor`` positive finite numbers (a fractional
``loss_scale_factor`` is honoured, as verl divides by it); ``batch_num_tokens`` (token-mean) and
``global_batch_size`` (the seq-mean modes) are required when ``dp_size > 1``, as verl requires them.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..rows import check

#: the place verl reads the aggregation's normalisers from, named in the errors
INFO = "config.global_batch_info"


@dataclass(frozen=True)
class VerlBatch:
    """verl's policy-loss tensors, checked, each ``[B, L]`` (a per-sequence ``[B, 1]`` input
    broadcast); ``weights`` is ``rollout_is_weights`` (None: unweighted)."""

    old_log_prob: Tensor
    log_prob: Tensor
    advantages: Tensor
    response_mask: Tensor
    weights: Optional[Tensor]


def _shape(t: Tensor) -> list:
    return list(t.shape)


def check_is_tensor(name: str, value) -> None:
    check(isinstance(value, Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}", TypeError)


def response_shape(tensors: dict[str, Tensor]) -> tuple[int, int]:
    """The ``[B, L]`` that at least two of the named tensors share; a ``ValueError`` naming each
    tensor whose shape differs from it."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    common, count = Counter(shapes.values()).most_common(1)[0]
    listed = ", ".join(f"{name} {list(s)}" for name, s in shapes.items())
    check(count >= 2 or len(shapes) == 1,
          f"{', '.join(shapes)} must share one shape [B, L] = [batch, response_length], got {listed}")
    check(len(common) == 2, f"{', '.join(shapes)} must be [B, L] = [batch, response_length], got {listed}")
    for name, s in shapes.items():
        others = " and ".join(n for n in shapes if shapes[n] == common)
        check(s == common, f"{name} must be [B, L] = {list(common)} (the shape of {others}), got {list(s)}")
    return common


def per_token(name: str, value: Tensor, shape: tuple[int, int]) -> Tensor:
    """``value`` as ``[B, L]``: as given, or a per-sequence ``[B, 1]`` broadcast; else a
    ``ValueError`` naming ``name`` and the expected shapes."""
    check_is_tensor(name, value)
    batch, length = shape
    if tuple(value.shape) == shape:
        return value
    if tuple(value.shape) == (batch, 1):
        return value.expand(batch, length)
    hint = ""
    if tuple(value.shape) == (length, batch):
        hint = " (transposed: [L, B])"
    elif tuple(value.shape) == (batch * length,):
        hint = " (flat: reshape it to [B, L])"
    elif tuple(value.shape) == (batch,):
        hint = " (one value per sequence: unsqueeze(-1) to [B, 1])"
    raise ValueError(f"{name} must be [B, L] = {list(shape)} or per sequence [B, 1] = [{batch}, 1], "
                     f"got {_shape(value)}{hint}")


def verl_batch(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights) -> VerlBatch:
    """verl's registered-loss tensors checked and laid out ``[B, L]`` (module docstring).

    Args:
        old_log_prob: ``[B, L]`` rollout-policy log-probs.
        log_prob: ``[B, L]`` current log-probs (differentiable).
        advantages: ``[B, L]`` or ``[B, 1]``.
        response_mask: ``[B, L]``, non-negative.
        rollout_is_weights: None, ``[B, L]`` or ``[B, 1]``.

    Returns:
        The ``VerlBatch``.
    """
    named = dict(log_prob=log_prob, old_log_prob=old_log_prob, response_mask=response_mask)
    for name, value in named.items():
        check_is_tensor(name, value)
    for name in ("log_prob", "old_log_prob"):
        check(named[name].is_floating_point(), f"{name} must be a floating tensor, got {named[name].dtype}", TypeError)
    shape = response_shape(named)
    given = dict(named, advantages=advantages, rollout_is_weights=rollout_is_weights)
    devices = {name: t.device for name, t in given.items() if isinstance(t, Tensor)}
    check(len(set(devices.values())) == 1, f"every tensor must be on one device, got {devices}")
    mask = response_mask
    bad = (mask < 0) | ~torch.isfinite(mask) if mask.is_floating_point() else mask < 0
    if bool(bad.any()):
        raise ValueError(f"response_mask must be non-negative and finite (it multiplies the token losses), got "
                         f"{mask[bad][0].item()!r} at {bad.nonzero()[0].tolist()}")
    weights = None if rollout_is_weights is None else per_token("rollout_is_weights", rollout_is_weights, shape)
    return VerlBatch(old_log_prob=old_log_prob, log_prob=log_prob,
                     advantages=per_token("advantages", advantages, shape), response_mask=mask, weights=weights)


def info_number(info: dict, key: str, integer: bool = False) -> Optional[float]:
    """``global_batch_info[key]`` as a positive finite number (None when absent); a 1-element
    tensor is read as its value."""
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, Tensor):
        check(value.numel() == 1, f"{INFO}[{key!r}] must be a number, got a tensor of shape {_shape(value)}")
        value = value.item()
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    check(ok and math.isfinite(value) and value > 0 and (not integer or float(value).is_integer()),
          f"{INFO}[{key!r}] must be a positive finite {'integer' if integer else 'number'}, got {value!r}")
    return float(value)


def required_when_sharded(key: Optional[float], name: str, dp: float, loss_agg_mode: str) -> None:
    """verl's ``agg_loss`` rule: with ``dp_size > 1`` the global normaliser ``name`` is required."""
    check(key is not None or dp == 1,
          f"{INFO}[{name!r}] (the global batch's count) is required when dp_size > 1 with "
          f"loss_agg_mode={loss_agg_mode!r}, as verl requires it; got dp_size={dp:g} without it")
