"""Which backend runs a call (SPEC section 5): ``auto`` resolution and the checks of an explicit choice."""
from __future__ import annotations

import importlib.util
import os

import torch

from . import native

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: CUDA tensors -> "cuda" if built else "triton"; CPU tensors -> "cpu" if built else
    "reference". An explicit backend that can't run on ``device`` is a ``ValueError``; a native
    backend that is missing names why (not built, or the extension failed to load)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if native.has_backend("cuda") else "triton"
        return "cpu" if native.has_backend("cpu") else "reference"
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ValueError("backend='triton' needs the triton package")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if backend in ("cpu", "cuda"):
        if not native.has_backend(backend):
            raise ValueError(f"backend={backend!r} is not available: {native.missing_reason(backend)}")
        if device.type != backend:
            raise ValueError(f"backend={backend!r} needs {backend} tensors, got {device.type}")
    return backend
