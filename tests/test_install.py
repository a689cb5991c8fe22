"""Installing as users do (issue 29, README "Install"): into a fresh venv, torch first, then the
package from a clone with ``--no-build-isolation``, gets the native backends built against that torch;
then a plain ``pip install .`` (an isolated build, which has no torch) installs pure Python, and the
first call that falls back warns once, naming the fix.

Needs the source tree (CI stage 1; stages 2 and 3 run a copy of tests/ against an installed wheel) and
a pip that can reach this torch release; about two minutes, most of it the C++ build."""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree (setup.py)"),
]
# what a clone holds: no build outputs, venvs or the in-place extension
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                        ".pytest_cache", "out", "docs")
PROBE = """
import json, warnings
import torch
import actfocus_kernels as ak
from actfocus_kernels import native
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        ak.token_stats(torch.randn(4, 10), torch.arange(4))
print(json.dumps({"file": ak.__file__, "info": native.build_info(),
                  "warnings": [str(w.message) for w in caught if type(w.message).__name__ == "NativeFallbackWarning"]}))
"""


def run(*command, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ACTFOCUS_", "VIRTUAL_ENV"))}
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def probe(python, cwd):
    return json.loads(run(python, "-c", PROBE, cwd=cwd).strip().splitlines()[-1])


def test_documented_install_builds_the_native_backends_and_a_pure_one_warns(tmp_path):
    clone = tmp_path / "actfocus_kernels"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # README "Install", from a clone: torch and the build tools first, then the package against them
    run(python, "-m", "pip", "install", "-q", f"torch=={importlib.metadata.version('torch')}", cwd=tmp_path)
    run(python, "-m", "pip", "install", "-q", "-r", ROOT / "requirements-build.txt", cwd=tmp_path)  # pinned
    run(python, "-m", "pip", "install", "-q", "--no-build-isolation", ".", cwd=clone)
    native = probe(python, tmp_path)
    assert Path(native["file"]).is_relative_to(venv), native["file"]
    assert "cpu" in native["info"]["backends"], native["info"]
    assert native["warnings"] == []

    # what the README warns against: pip's isolated build has no torch, so pure Python is installed
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", ".", cwd=clone)
    pure = probe(python, tmp_path)
    assert pure["info"]["backends"] == [] and pure["info"]["load_error"] is None, pure["info"]
    assert len(pure["warnings"]) == 1, pure["warnings"]
    assert "pip install --no-build-isolation" in pure["warnings"][0]
