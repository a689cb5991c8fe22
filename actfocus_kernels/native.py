"""The optional C++/CUDA extension ``actfocus_kernels._C`` (ops in namespace ``actfocus_native``).

The package works without it (reference and Triton backends); ``has_backend`` says what was built.
"""
from __future__ import annotations

try:
    from . import _C
except ImportError:  # extension not built
    _C = None

# Read once at import so that backend selection stays traceable by torch.compile.
BUILT_BACKENDS = frozenset(_C.build_info()["backends"]) if _C is not None else frozenset()


def has_backend(name: str) -> bool:
    """True when the extension was built with backend ``name`` ("cpu" or "cuda")."""
    return name in BUILT_BACKENDS
