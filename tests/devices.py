"""The test device and the backends that run on it. On a machine without CUDA the Triton kernels
run under the interpreter, which must be switched on before any kernel module is imported: the
suite's conftest.py imports this module first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from actfocus_kernels import native  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_backends() -> list[str]:
    """Every backend that can run on this machine's test device."""
    backends = ["reference"]
    try:
        import triton  # noqa: F401

        backends.append("triton")
    except ImportError:
        pass
    for name in ("cpu", "cuda"):
        if native.has_backend(name) and DEVICE.type == name:
            backends.append(name)
    return backends


BACKENDS = available_backends()
