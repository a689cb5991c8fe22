"""The integrations are optional: ``import actfocus_kernels`` (and the integrations package and its
span rule) never imports a trainer, and the peers are declared as pinned extras."""
import subprocess
import sys
from importlib import metadata

PEERS = ("trl", "verl", "transformers", "accelerate", "datasets")


def test_library_import_never_imports_a_peer():
    code = ("import sys, actfocus_kernels, actfocus_kernels.integrations, actfocus_kernels.integrations.spans; "
            f"print(','.join(m for m in {PEERS!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported at import time: {result.stdout.strip()}"


def test_peers_are_pinned_extras():
    requires = metadata.requires("actfocus_kernels") or []
    assert 'trl==1.16.0; extra == "trl"' in requires
    assert 'verl==0.9.1; extra == "verl"' in requires
