"""Which backend runs a call (SPEC section 5): ``auto`` resolution and the checks of an explicit choice."""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import native

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
_FALLBACK_WARNED: set[str] = set()  # the device types whose fallback has been reported
# Read once at import, like native.BUILT_BACKENDS, so that resolve_backend traces under torch.compile:
# torch 2.11's dynamo refuses to trace importlib.util.find_spec (a graph break, an error with fullgraph=True).
HAS_TRITON = importlib.util.find_spec("triton") is not None


class NativeFallbackWarning(UserWarning):
    """``backend="auto"`` ran a slower backend because the native one for the tensor's device is missing."""


def _fallback(device_type: str, fallback: str) -> str:
    """``fallback``, after a warning at the first fallback of ``device_type`` in this process: what is
    missing, why, and the command that builds it (a pure-Python install is otherwise silent and runs
    the reference backend, 10-30x slower, or Triton instead of the CUDA kernels). Not while
    torch.compile traces, which would graph-break on it."""
    if device_type not in _FALLBACK_WARNED and not torch.compiler.is_compiling():
        _FALLBACK_WARNED.add(device_type)
        warnings.warn(f"actfocus_kernels: the native {device_type} backend is missing, so {device_type} tensors "
                      f"run the {fallback} backend; {native.missing_reason(device_type)}",
                      NativeFallbackWarning, stacklevel=4)
    return fallback


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: CUDA tensors -> "cuda" if built else "triton"; CPU tensors -> "cpu" if built else
    "reference", warning once per device type at the first such fallback. An explicit backend that
    can't run on ``device`` is a ``ValueError``; a native backend that is missing names why (not
    built, or the extension failed to load) and the command that builds it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if native.has_backend("cuda") else _fallback("cuda", "triton")
        return "cpu" if native.has_backend("cpu") else _fallback("cpu", "reference")
    if backend == "triton":
        if not HAS_TRITON:
            raise ValueError("backend='triton' needs the triton package")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if backend in ("cpu", "cuda"):
        if not native.has_backend(backend):
            raise ValueError(f"backend={backend!r} is not available: {native.missing_reason(backend)}")
        if device.type != backend:
            raise ValueError(f"backend={backend!r} needs {backend} tensors, got {device.type}")
    return backend
