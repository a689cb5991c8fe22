"""Build and install actfocus_kernels (and the reference trainer from python/).

The native extension ``actfocus_kernels._C`` (csrc/, ops in namespace ``actfocus_native``) is built
with ``torch.utils.cpp_extension`` and ninja (``MAX_JOBS`` bounds the parallel compile jobs):

- CPU kernels always (OpenMP over rows, ``at::vec``; an AVX2 copy is chosen at run time);
- CUDA kernels when a CUDA toolkit (``CUDA_HOME``) and a CUDA build of torch are present, or when
  ``ACTFOCUS_FORCE_CUDA=1``; ``ACTFOCUS_CUDA=0`` skips them. Archs come from ``TORCH_CUDA_ARCH_LIST``
  (default ``8.0;9.0a``); the sm_90 cluster kernel is compiled only when ``9.0a`` is listed.
- ``ACTFOCUS_NATIVE=0``, or no importable torch (an isolated build), installs pure Python: the
  package then runs its reference and Triton backends.

The version's local tag names what was built, e.g. ``0.1.0+cpu.torch213`` or
``0.1.0+cu130.torch213.sm80.sm90a`` (``scripts/build_wheels.sh`` builds one wheel per arch set).
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0a"
SM90_SOURCES = ("csrc/cuda/kernels/policy_loss_sm90.cu",)


def _sources(*patterns: str) -> list[str]:
    return [path for pattern in patterns for path in sorted(glob.glob(pattern, root_dir=ROOT))]


def _arch_list() -> list[str]:
    """TORCH_CUDA_ARCH_LIST entries (";" or " " separated), e.g. ["8.0", "9.0a"]."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    return [arch for arch in value.replace(" ", ";").split(";") if arch]


def _native_extension():
    """(ext_modules, cmdclass, local version tag) of the native build; empty for pure Python."""
    if os.environ.get("ACTFOCUS_NATIVE", "1") == "0":
        return [], {}, ""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("actfocus_kernels: torch is not importable, installing without the native extension",
              file=sys.stderr)
        return [], {}, ""

    torch_tag = "torch" + "".join(torch.__version__.split("+")[0].split(".")[:2])
    with_cuda = os.environ.get("ACTFOCUS_CUDA", "1") != "0" and (
        os.environ.get("ACTFOCUS_FORCE_CUDA", "0") == "1"
        or (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None)
    )
    sources = _sources("csrc/torch_bindings.cpp", "csrc/cpu/*.cpp", "csrc/cpu/kernels/*.cpp")
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    define_macros = []
    extension = cpp_extension.CppExtension
    nvcc_flags = []
    tag = f"cpu.{torch_tag}"
    if with_cuda and torch.version.cuda is None:
        raise RuntimeError(
            "ACTFOCUS_FORCE_CUDA=1 needs a CUDA build of torch (this one is CPU-only); the CUDA "
            "kernels alone compile without it: bash scripts/compile_cuda.sh")
    if with_cuda:
        archs = _arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
        arch_names = [arch.replace("+PTX", "").replace(".", "") for arch in archs]
        cuda_sources = [path for path in _sources("csrc/cuda/kernels/*.cu")
                        if path not in SM90_SOURCES]
        define_macros += [("ACTFOCUS_WITH_CUDA", None),
                          ("ACTFOCUS_CUDA_ARCHS", ",".join(f"sm_{name}" for name in arch_names))]
        if "90a" in arch_names:
            cuda_sources += list(SM90_SOURCES)
            define_macros.append(("ACTFOCUS_WITH_SM90", None))
        sources += _sources("csrc/cuda/*.cpp") + cuda_sources
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        extension = cpp_extension.CUDAExtension
        cuda_tag = "cu" + torch.version.cuda.replace(".", "")
        tag = ".".join([cuda_tag, torch_tag] + [f"sm{name}" for name in arch_names])

    ext = extension(
        name="actfocus_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}, tag


ext_modules, cmdclass, local_tag = _native_extension()

setup(
    name="actfocus_kernels",
    version=VERSION + (f"+{local_tag}" if local_tag else ""),
    description="Fused RL policy-loss kernels with ActFocus token weighting",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["actfocus_kernels", "actfocus_kernels.*"])
    + find_packages("python", include=["actfocus_trainer", "actfocus_trainer.*"]),
    package_dir={"actfocus_trainer": "python/actfocus_trainer"},
    install_requires=["torch>=2.5"],
    extras_require={
        "triton": ["triton>=3.2"],
        "trainer": ["tqdm", "matplotlib"],
        "test": ["pytest", "numpy"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
