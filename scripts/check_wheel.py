"""Checks built wheels of actfocus_kernels: what a wheel's name claims is what it holds.

    python scripts/check_wheel.py dist/actfocus_kernels-*.whl [--archs "8.0;9.0a;10.0;12.0+PTX"]
    python scripts/check_wheel.py --device [--import-with .venv-211/bin/python] dist/*torch211*.whl

For each wheel, from its local version tag (``+cu130.torch214.sm80.sm90a.sm100.sm120`` or
``+cpu.torch213``):

- METADATA pins the torch minor of the tag (``Requires-Dist: torch==2.14.*``): ``_C`` is bound to
  the C++ ABI of the torch it was compiled against;
- ``_C`` has no host debug info (no ``.debug_*`` section) and fits the size budget below;
- ``_C`` needs (ELF NEEDED) only torch's libraries, the CUDA runtime of the tag's CUDA major (CUDA
  wheels only) and the C/C++/OpenMP runtimes torch itself loads; never the driver (libcuda), so
  the wheel imports on a machine without a GPU;
- CUDA wheels: SASS for every arch of the tag and the PTX the arch list asks for, of the newest
  arch only (the fatbin headers of ``cuobjdump -elf`` / ``-ptx``; the cuobjdump on PATH, of the CUDA toolkit,
  or the one triton ships), and the tag's archs are the expected ones: ``--archs``, default
  setup.py's ``RELEASE_CUDA_ARCHS``;
- ``--device``: the device wheel for the lent GPU machines (torch 2.11.0+cu130, Python 3.12):
  setup.py's ``DEVICE_CUDA_ARCHS`` (SASS sm_80 + sm_90a, no PTX), a ``cp312`` wheel pinning torch
  2.11, within the device budget (8 MiB);
- ``--import-with PYTHON``: the wheel installed into a temporary folder imports its ``_C`` under
  PYTHON's torch (which must be the pinned minor), and ``build_info()`` there names that torch.
Prints one line per check; exits 1 if any fails.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from cuda_home import cuda_home  # noqa: E402

MiB = 1024 * 1024
# Size budgets (README "Wheels"), about twice what was measured: CUDA (4 SASS archs + 1 PTX) _C 7.4 MiB,
# wheel 2.2 MiB since the kernels take the logit transform and the extra statistics (a softcap and an
# extras copy of each row kernel per dtype and arch); CPU _C 0.5 MiB. Host debug info alone was 13 MB of a
# 14 MB one-arch _C.
# The device wheel's budget is issue 29's: what a lease may carry to the GPU machine beside the peers' wheels.
SO_BUDGET = {"cpu": 1 * MiB, "cuda": 15 * MiB, "device": 8 * MiB}
WHEEL_BUDGET = {"cpu": 1 * MiB, "cuda": 5 * MiB, "device": 8 * MiB}
DEVICE_TORCH = "2.11"  # the GPU image's torch 2.11.0+cu130
DEVICE_PYTHON_TAG = "cp312"  # and its Python 3.12
# NEEDED entries allowed besides torch's own libraries (torch/lib) and, for CUDA, libcudart.so.<major>:
# glibc, the GCC C++ runtime and GNU OpenMP (torch/lib ships libgomp.so.1 and loads it first).
SYSTEM_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
               "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1"}
TAG = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)\+(?P<local>[^-]+)-")


def setup_constant(name: str) -> str:
    """A constant of setup.py (RELEASE_CUDA_ARCHS, DEVICE_CUDA_ARCHS), read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"setup.py defines no {name}")


def expected_archs(arch_list: str) -> tuple[list[str], list[str]]:
    """(SASS archs, PTX archs) of a TORCH_CUDA_ARCH_LIST: "9.0a;12.0+PTX" -> (["90a", "120"], ["120"])."""
    entries = [entry for entry in arch_list.replace(" ", ";").split(";") if entry]
    sass = [entry.replace("+PTX", "").replace(".", "") for entry in entries]
    ptx = [entry.replace("+PTX", "").replace(".", "") for entry in entries if entry.endswith("+PTX")]
    return sass, ptx


def find_cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    home = cuda_home()
    if home is not None:
        candidates.append(os.path.join(home, "bin", "cuobjdump"))
    triton = importlib.util.find_spec("triton")
    if triton is not None:
        candidates.append(os.path.join(triton.submodule_search_locations[0], "backends", "nvidia",
                                       "bin", "cuobjdump"))
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def arch_number(arch: str) -> int:
    return int(re.match(r"\d+", arch).group())


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        self.failed += not ok


def check_import(wheel: Path, python: str, torch_minor: str, checks: Checks) -> None:
    """The wheel, installed alone into a temporary folder, imports ``_C`` under ``python``'s torch."""
    python = os.path.abspath(python)  # the venv's own interpreter, not its link target
    with tempfile.TemporaryDirectory() as target:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target,
                        str(wheel)], check=True)
        probe = ("import torch, actfocus_kernels._C as C; info = C.build_info(); "
                 "print(torch.__version__, info['torch_version'], info['backends'])")
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=target,
                                env={**os.environ, "PYTHONPATH": target})
    words = result.stdout.split()
    ok = result.returncode == 0 and len(words) >= 2 and all(
        ".".join(version.split("+")[0].split(".")[:2]) == torch_minor for version in words[:2])
    checks.check(ok, f"_C imports under {python}: {result.stdout.strip() or result.stderr.strip()[-400:]}")


def check_wheel(wheel: Path, arch_list: str, device: bool, python: str | None) -> bool:
    print(f"{wheel.name} ({wheel.stat().st_size / MiB:.2f} MiB)")
    checks = Checks()
    match = TAG.match(wheel.name)
    if match is None:
        checks.check(False, "the version has a local tag (+cpu.torchXY or +cuXYZ.torchXY.smNN...)")
        return False
    parts = match["local"].split(".")
    kind = "device" if device else "cpu" if parts[0] == "cpu" else "cuda"
    torch_part = parts[1]  # torch214
    torch_minor = f"{torch_part[5]}.{torch_part[6:]}"
    tag_archs = [part[2:] for part in parts[2:]]
    if device:
        checks.check(parts[0] != "cpu" and torch_minor == DEVICE_TORCH
                     and f"-{DEVICE_PYTHON_TAG}-" in wheel.name,
                     f"a CUDA wheel for torch {DEVICE_TORCH} on {DEVICE_PYTHON_TAG} (the GPU image)")
    checks.check(wheel.stat().st_size <= WHEEL_BUDGET[kind],
                 f"wheel size {wheel.stat().st_size / MiB:.2f} MiB <= {WHEEL_BUDGET[kind] / MiB:.0f} MiB")

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp)
        metadata = next(Path(tmp).glob("*.dist-info/METADATA")).read_text()
        requires = re.findall(r"^Requires-Dist: (torch\b[^;\n]*)$", metadata, re.M)
        checks.check(requires == [f"torch=={torch_minor}.*"],
                     f"METADATA pins torch {torch_minor}: {requires}")
        libraries = list(Path(tmp).glob("actfocus_kernels/_C*.so"))
        checks.check(len(libraries) == 1, f"one native library: {[p.name for p in libraries]}")
        if len(libraries) != 1:
            return False
        library = str(libraries[0])
        size = os.path.getsize(library)
        checks.check(size <= SO_BUDGET[kind],
                     f"_C size {size / MiB:.2f} MiB <= {SO_BUDGET[kind] / MiB:.0f} MiB")
        sections = re.findall(r"\]\s+(\.\S+)", run("readelf", "-S", "-W", library))
        debug = [name for name in sections if name.startswith(".debug")]
        checks.check(not debug, f"no host debug info {debug or ''}".rstrip())

        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", library))
        torch_dir = importlib.util.find_spec("torch").submodule_search_locations[0]
        torch_libs = set(os.listdir(os.path.join(torch_dir, "lib")))
        allowed = SYSTEM_LIBS | torch_libs
        if kind != "cpu":
            allowed.add(f"libcudart.so.{parts[0][2:-1]}")  # cu130 -> libcudart.so.13
            checks.check(any(name.startswith("libcudart.so") for name in needed),
                         "links the CUDA runtime")
        unexpected = [name for name in needed if name not in allowed]
        checks.check(not unexpected, f"NEEDED {needed}" + (f", unexpected {unexpected}" if unexpected else ""))

        if kind != "cpu":
            want_sass, want_ptx = expected_archs(arch_list)
            checks.check(tag_archs == want_sass, f"tag archs {tag_archs} == expected {want_sass}")
            cuobjdump = find_cuobjdump()
            checks.check(cuobjdump is not None, f"cuobjdump found: {cuobjdump}")
            if cuobjdump is not None:
                # the arch of each fatbin entry from its header: the file names of --list-elf drop the
                # "a" of sm_90a in older cuobjdumps (CUDA 12.8, triton 3.6's)
                sass = set(re.findall(r"Fatbin elf code:\n=+\narch = sm_(\w+)", run(cuobjdump, "-elf", library)))
                ptx = set(re.findall(r"Fatbin ptx code:\n=+\narch = sm_(\w+)", run(cuobjdump, "-ptx", library)))
                newest = max(tag_archs, key=arch_number)
                checks.check(sass == set(tag_archs), f"SASS (cuobjdump -elf): {sorted(sass, key=arch_number)}")
                checks.check(ptx == set(want_ptx) and set(want_ptx) <= {newest},
                             f"PTX (cuobjdump -ptx): {sorted(ptx)} == expected {want_ptx}, "
                             f"only of the newest arch {newest}")
    if python is not None:
        check_import(wheel, python, torch_minor, checks)
    return checks.failed == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--archs", default=None,
                        help="expected TORCH_CUDA_ARCH_LIST of CUDA wheels (default: setup.py's "
                        "RELEASE_CUDA_ARCHS, DEVICE_CUDA_ARCHS with --device)")
    parser.add_argument("--device", action="store_true",
                        help="the device wheel: torch 2.11, cp312, DEVICE_CUDA_ARCHS, 8 MiB")
    parser.add_argument("--import-with", metavar="PYTHON", default=None,
                        help="also import each wheel's _C with this Python's torch")
    args = parser.parse_args()
    arch_list = args.archs or setup_constant("DEVICE_CUDA_ARCHS" if args.device else "RELEASE_CUDA_ARCHS")
    results = [check_wheel(wheel, arch_list, args.device, args.import_with) for wheel in args.wheels]
    if not all(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
