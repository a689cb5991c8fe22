"""Build and install actfocus_kernels (and the reference trainer from python/).

The native extension ``actfocus_kernels._C`` (csrc/, ops in namespace ``actfocus_native``) is built
with ``torch.utils.cpp_extension`` and ninja (``MAX_JOBS`` bounds the parallel compile jobs):

- CPU kernels always (OpenMP over rows, ``at::vec``; an AVX2 copy is chosen at run time);
- CUDA kernels when a CUDA toolkit and a CUDA build of torch are present, or when
  ``ACTFOCUS_FORCE_CUDA=1``; ``ACTFOCUS_CUDA=0`` skips them. The toolkit is ``CUDA_HOME``, else the
  one behind the ``nvcc`` on PATH, a wrapper script included (scripts/cuda_home.py, found before
  cpp_extension reads ``CUDA_HOME``). Archs come from ``TORCH_CUDA_ARCH_LIST`` (default
  ``RELEASE_CUDA_ARCHS``: SASS for sm_80, sm_90a, sm_100, sm_120 and the PTX of compute_120); the
  sm_90 cluster kernel is compiled only when ``9.0a`` is listed.
- ``ACTFOCUS_NATIVE=0``, or no importable torch (an isolated build), installs pure Python: the
  package then runs its reference and Triton backends.

Release flags: ``-O3``, no host debug info (``-g0`` after Python's own ``-g``), no device line info
(``ACTFOCUS_LINEINFO=1`` adds ``-lineinfo`` for profilers, tripling the SASS). A native build's
``_C`` is bound to the C++ ABI of the torch it was compiled against, so its metadata pins that torch
minor (``torch==2.15.*``), CPU and CUDA builds alike; a pure-Python install accepts the tested range
``TESTED_TORCH``. The version's local tag names what was built (``cuXYZ``: the nvcc toolkit's
release), e.g. ``0.1.0+cpu.torch213`` or ``0.1.0+cu130.torch215.sm80.sm90a.sm100.sm120`` (``make
wheels`` / ``scripts/build_wheels.sh``).
"""
from __future__ import annotations

import glob
import os
import re
import runpy
import subprocess
import sys

from setuptools import find_packages, setup

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
# sm_80 SASS serves every sm_8x GPU, sm_90a the H100/H200 (with the cluster kernel), sm_100 the
# B200/GB200/B300, sm_120 the RTX 50 / RTX PRO Blackwell; compute_120 PTX JIT-compiles on newer GPUs.
RELEASE_CUDA_ARCHS = "8.0;9.0a;10.0;12.0+PTX"
# CI: torch 2.13.0 (CPU build), 2.15.0 (CUDA build) and 2.11.0 (CUDA build, Python 3.12: the device wheel)
TESTED_TORCH = ">=2.11,<2.16"
# the device wheel (make wheels, CI stage 3): the GPU machines' torch 2.11.0+cu130 on Python 3.12, H100/H200
# (sm_90a, with the cluster kernel) and sm_8x; no PTX
DEVICE_CUDA_ARCHS = "8.0;9.0a"
SM90_SOURCES = ("csrc/cuda/kernels/policy_loss_sm90.cu",)


def _sources(*patterns: str) -> list[str]:
    return [path for pattern in patterns for path in sorted(glob.glob(pattern, root_dir=ROOT))]


def _arch_list() -> list[str]:
    """TORCH_CUDA_ARCH_LIST entries (";" or " " separated), e.g. ["8.0", "9.0a", "12.0+PTX"]."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST") or RELEASE_CUDA_ARCHS
    return [arch for arch in value.replace(" ", ";").split(";") if arch]


def _find_cuda_home() -> None:
    """Sets CUDA_HOME to the toolkit behind a wrapper nvcc, before cpp_extension reads it."""
    if os.environ.get("ACTFOCUS_CUDA", "1") == "0" or os.environ.get("CUDA_HOME"):
        return
    root = runpy.run_path(os.path.join(ROOT, "scripts", "cuda_home.py"))["cuda_home"]()
    if root is not None:
        os.environ["CUDA_HOME"] = root


def _toolkit_tag() -> str:
    """"cu130" for the CUDA toolkit that compiles the kernels (``nvcc --version``): the runtime ``_C``
    links and ``build_info()["cuda_version"]`` reports, which may be older than torch's own (2.15.0 is
    a CUDA 13.2 build; nvcc 13.0 builds for it, the same libcudart.so.13)."""
    from torch.utils.cpp_extension import CUDA_HOME

    output = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], check=True,
                            capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the CUDA release from nvcc --version: {output!r}")
    return f"cu{match[1]}{match[2]}"


def _cuda_build(torch, torch_tag: str) -> tuple[list[str], list[tuple], list[str], list[str], str]:
    """(sources, define_macros, extra C++ flags, nvcc flags, local version tag) of the CUDA kernels.
    The arch lists are C++-only macros (build_info in torch_bindings.cpp): nvcc would split a
    comma-separated -D value into one macro per arch."""
    archs = _arch_list()
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    arch_names = [arch.replace("+PTX", "").replace(".", "") for arch in archs]
    ptx_names = [arch.replace("+PTX", "").replace(".", "") for arch in archs if arch.endswith("+PTX")]
    sources = [path for path in _sources("csrc/cuda/kernels/*.cu") if path not in SM90_SOURCES]
    macros = [("ACTFOCUS_WITH_CUDA", None)]
    cxx_flags = ["-DACTFOCUS_CUDA_ARCHS=" + ",".join(f"sm_{name}" for name in arch_names),
                 "-DACTFOCUS_CUDA_PTX=" + ",".join(f"compute_{name}" for name in ptx_names)]
    if "90a" in arch_names:
        sources += list(SM90_SOURCES)
        macros.append(("ACTFOCUS_WITH_SM90", None))
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr"]
    if os.environ.get("ACTFOCUS_LINEINFO", "0") == "1":  # device line info, for profilers: ~3x the SASS
        nvcc_flags.append("-lineinfo")
    tag = ".".join([_toolkit_tag(), torch_tag] + [f"sm{name}" for name in arch_names])
    return _sources("csrc/cuda/*.cpp") + sources, macros, cxx_flags, nvcc_flags, tag


def _native_extension():
    """(ext_modules, cmdclass, local version tag, torch requirement) of the native build; no
    extension and the tested torch range for pure Python."""
    pure = [], {}, "", f"torch{TESTED_TORCH}"
    if os.environ.get("ACTFOCUS_NATIVE", "1") == "0":
        return pure
    _find_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("actfocus_kernels: torch is not importable, installing without the native extension",
              file=sys.stderr)
        return pure

    torch_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])  # "2.14"
    torch_tag = "torch" + torch_minor.replace(".", "")
    with_cuda = os.environ.get("ACTFOCUS_CUDA", "1") != "0" and (
        os.environ.get("ACTFOCUS_FORCE_CUDA", "0") == "1"
        or (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None)
    )
    if with_cuda and torch.version.cuda is None:
        raise RuntimeError(
            "ACTFOCUS_FORCE_CUDA=1 needs a CUDA build of torch (this one is CPU-only); the CUDA "
            "kernels alone compile without it: bash scripts/compile_cuda.sh")
    sources = _sources("csrc/torch_bindings.cpp", "csrc/cpu/*.cpp", "csrc/cpu/kernels/*.cpp")
    cxx_flags = ["-O3", "-g0"]
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    define_macros = []
    extension = cpp_extension.CppExtension
    nvcc_flags = []
    tag = f"cpu.{torch_tag}"
    if with_cuda:
        cuda_sources, cuda_macros, cuda_cxx_flags, nvcc_flags, tag = _cuda_build(torch, torch_tag)
        sources += cuda_sources
        define_macros += cuda_macros
        cxx_flags += cuda_cxx_flags
        extension = cpp_extension.CUDAExtension

    ext = extension(
        name="actfocus_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}, tag, f"torch=={torch_minor}.*"


ext_modules, cmdclass, local_tag, torch_requirement = _native_extension()

setup(
    name="actfocus_kernels",
    version=VERSION + (f"+{local_tag}" if local_tag else ""),
    description="Fused RL policy-loss kernels with ActFocus token weighting",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["actfocus_kernels", "actfocus_kernels.*"])
    + find_packages("python", include=["actfocus_trainer", "actfocus_trainer.*"]),
    package_dir={"actfocus_trainer": "python/actfocus_trainer"},
    install_requires=[torch_requirement],
    extras_require={
        "triton": ["triton>=3.2"],
        "trainer": ["tqdm", "matplotlib"],
        "test": ["pytest", "numpy"],
        # the peers of actfocus_kernels.integrations.trl / .verl, at the versions their parity is tested
        # against (the library itself never imports them)
        "trl": ["trl==1.16.0"],
        "verl": ["verl==0.9.1"],
        "openrlhf": ["openrlhf==0.11.2"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
