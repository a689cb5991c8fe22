"""The CUDA toolkit root, for setup.py and scripts/compile_cuda.sh (their one implementation).

``CUDA_HOME`` (or ``CUDA_PATH``) when set; else the root of the toolkit behind the ``nvcc`` on PATH,
also when that ``nvcc`` is a wrapper script (``/usr/local/bin/nvcc`` running
``/usr/local/cuda-13.0/bin/nvcc``), where torch's cpp_extension would take the wrapper's parent
(``/usr/local``) and miss ``cuda_runtime.h``: the root is the one nvcc itself reports, its ``TOP``
in ``nvcc --dryrun``. None when there is no toolkit.

    python scripts/cuda_home.py     # prints the root; exits 1 when there is none
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Optional


def is_toolkit(root: str) -> bool:
    """True when root holds nvcc and the CUDA runtime headers."""
    return (os.path.isfile(os.path.join(root, "bin", "nvcc"))
            and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")))


def _dryrun_top(nvcc: str) -> Optional[str]:
    """The toolkit root nvcc reports in its dry run (``#$ TOP=/usr/local/cuda-13.0/bin/..``)."""
    try:
        dryrun = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dryrun.stderr + dryrun.stdout).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line[len("#$ TOP="):].strip())
    return None


def cuda_home() -> Optional[str]:
    """The CUDA toolkit root (see the module docstring), or None."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            return os.environ[name]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    beside = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))  # nvcc or a link to it
    if is_toolkit(beside):
        return beside
    top = _dryrun_top(nvcc)
    return top if top is not None and is_toolkit(top) else None


if __name__ == "__main__":
    root = cuda_home()
    if root is None:
        sys.exit(1)
    print(root)
