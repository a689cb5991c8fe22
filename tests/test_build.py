"""The build (setup.py, csrc layout): the installed distribution's version tag and torch pin agree with
what the extension reports, the CUDA kernels are registered where they are built, the torch-free
csrc folders are checked, and under CI stage 2 (``ACTFOCUS_EXPECT_WHEEL=cuda``, scripts/test_wheel.sh)
and the GPU check with a carried device wheel (stage 3) the suite runs against the installed wheel,
not a source tree."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

import actfocus_kernels
from actfocus_kernels import native

ROOT = Path(__file__).resolve().parents[1]
EXPECT_WHEEL = os.environ.get("ACTFOCUS_EXPECT_WHEEL")
needs_native = pytest.mark.skipif(not native.has_backend("cpu"), reason="actfocus_kernels._C is not built")
needs_cuda_build = pytest.mark.skipif(not native.has_backend("cuda"), reason="built without CUDA")


def minor(version: str) -> str:
    """ "2.14.1+cu130" -> "2.14" """
    return ".".join(version.split("+")[0].split(".")[:2])


def expected_local_tag(info: dict) -> str:
    """The version's local tag setup.py gives the build described by ``info``."""
    torch_tag = "torch" + minor(info["torch_version"]).replace(".", "")
    if "cuda" not in info["backends"]:
        return f"cpu.{torch_tag}"
    cuda_tag = "cu" + info["cuda_version"].replace(".", "")
    return ".".join([cuda_tag, torch_tag] + [arch.replace("sm_", "sm") for arch in info["archs"]])


@needs_native
def test_version_names_what_was_built():
    version = importlib.metadata.version("actfocus_kernels")
    assert version.endswith("+" + expected_local_tag(native.build_info())), version


@needs_native
def test_built_against_this_torch_minor_and_pins_it():
    built = minor(native.build_info()["torch_version"])
    assert minor(torch.__version__) == built
    assert f"torch=={built}.*" in importlib.metadata.requires("actfocus_kernels")


@needs_cuda_build
def test_cuda_kernels_registered_for_this_cuda_major():
    info = native.build_info()
    for op in ("token_stats", "policy_loss"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"actfocus_native::{op}", "CUDA"), op
    # PTX only of archs built (the release wheel's exact set is scripts/check_wheel.py's job)
    assert {ptx.replace("compute_", "sm_") for ptx in info["ptx"]} <= set(info["archs"])
    # _C links libcudart.so.<major>: torch's CUDA runtime must be the same major
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]


@pytest.mark.skipif(EXPECT_WHEEL is None, reason="ACTFOCUS_EXPECT_WHEEL unset (CI stage 2 sets it)")
def test_runs_against_the_installed_wheel():
    """Stage 2 installs the wheel into the venv; the GPU check (benchmarks/gpu_check.sh, stage 3's dry
    run) installs the carried device wheel with --target into a folder on PYTHONPATH."""
    package = Path(actfocus_kernels.__file__).resolve().parent
    site = {Path(sysconfig.get_path(name)).resolve() for name in ("platlib", "purelib")}
    site |= {Path(entry).resolve() for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    assert package.parent in site, f"actfocus_kernels imported from {package}, not an installed wheel"
    assert native.has_backend(EXPECT_WHEEL), native.build_info()


CHECK = ROOT / "scripts" / "check_torch_free.sh"


@pytest.mark.skipif(not CHECK.exists() or shutil.which("c++") is None,
                    reason="needs the source tree and a C++ compiler")
@pytest.mark.parametrize("header, include", [
    ("core/row_dtype.h", "#include <ATen/core/Tensor.h>"),           # direct
    ("core/token_loss.h", '#include "glue/checks.h"'),                # through a glue header
    ("cuda/kernels/launch.h", "#include <torch/extension.h>"),
])
def test_torch_free_check_fails_on_a_torch_include(tmp_path, header, include):
    def check(csrc):
        return subprocess.run(["bash", str(CHECK), str(csrc)], capture_output=True, text=True)

    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    assert check(csrc).returncode == 0
    path = csrc / header
    path.write_text(include + "\n" + path.read_text())
    result = check(csrc)
    assert result.returncode == 1, result.stdout
    assert "check_torch_free" in result.stderr


@pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree")
def test_pure_python_build_accepts_the_claimed_range(tmp_path):
    """ACTFOCUS_NATIVE=0 (as an isolated build without torch): the wheel is pure Python and declares
    a torch range holding both ends CI tests, 2.11.0 and 2.15.0, and the torch of every CI venv."""
    from packaging.requirements import Requirement

    env = {**os.environ, "ACTFOCUS_NATIVE": "0"}
    clone = tmp_path / "src"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                               "*.so", "docs", "out", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(clone)], check=True, env=env, capture_output=True)
    (wheel,) = tmp_path.glob("actfocus_kernels-*.whl")
    assert "-py3-none-any.whl" in wheel.name and "+" not in wheel.name.split("-")[1], wheel.name
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(name) for name in archive.namelist() if name.endswith("METADATA")).decode()
    (torch_requirement,) = [Requirement(line.split(": ", 1)[1]) for line in metadata.splitlines()
                            if line.startswith("Requires-Dist: torch")]
    pins = [Requirement(line).specifier for path in ROOT.glob("requirements-torch*.txt")
            for line in path.read_text().splitlines() if line.startswith("torch==")]
    ci_torches = ["2.13.0"] + [str(next(iter(pin))).removeprefix("==") for pin in pins]
    for version in {"2.11.0", "2.15.0", *ci_torches}:
        assert torch_requirement.specifier.contains(version), (torch_requirement, version)
    assert not torch_requirement.specifier.contains("2.10.0") and not torch_requirement.specifier.contains("2.16.0")


def test_compat_all_gather_single_gathers_in_rank_order(tmp_path):
    """actfocus_kernels.compat.all_gather_single on a gloo group of one (the only group a single test
    process has): the shim for torch 2.11, which lacks dist.all_gather_single, is the same call."""
    import torch.distributed as dist

    from actfocus_kernels import compat

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        value = torch.arange(6.0).view(3, 2)
        output = torch.full((3, 2), float("nan"))
        compat.all_gather_single(output, value)
        torch.testing.assert_close(output, value)
        # torch 2.11's path, whatever torch runs this: the alias every supported torch has
        with pytest.MonkeyPatch.context() as patch:
            patch.delattr(dist, "all_gather_single", raising=False)
            output.fill_(float("nan"))
            compat.all_gather_single(output, value)
        torch.testing.assert_close(output, value)
    finally:
        dist.destroy_process_group()
