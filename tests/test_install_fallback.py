"""The warning of a missing native backend (issue 29): ``backend="auto"`` on a device whose native
backend is missing falls back (CPU: ``reference``, CUDA: ``triton``) and says so once per device type,
at the first fallback: what is missing, why, and the command that builds it. The real pure-Python
install is tests/test_install.py's."""
import warnings

import pytest
import torch

from actfocus_kernels import backends, native
from actfocus_kernels.backends import NativeFallbackWarning, resolve_backend


@pytest.fixture
def fresh(monkeypatch):
    """Nothing reported yet in this process."""
    monkeypatch.setattr(backends, "_FALLBACK_WARNED", set())


def fallback_warnings(device: str, calls: int = 3) -> tuple[list[str], list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = [resolve_backend("auto", torch.device(device)) for _ in range(calls)]
    return chosen, [w for w in caught if issubclass(w.category, NativeFallbackWarning)]


def test_pure_python_install_warns_once_with_the_fix(fresh, monkeypatch):
    monkeypatch.setattr(native, "BUILT_BACKENDS", frozenset())
    monkeypatch.setattr(native, "_C", None)
    monkeypatch.setattr(native, "LOAD_ERROR", None)
    chosen, caught = fallback_warnings("cpu")
    assert chosen == ["reference"] * 3
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    for part in ("native cpu backend is missing", "reference backend", "pure-Python install",
                 "isolated environment without torch", "pip install --no-build-isolation"):
        assert part in message, message
    assert caught[0].filename == __file__  # points at the caller's call, not the library's insides


def test_each_device_type_warns_once(fresh, monkeypatch):
    monkeypatch.setattr(native, "BUILT_BACKENDS", frozenset({"cpu"}))
    assert fallback_warnings("cpu")[1] == []  # the CPU backend is there: nothing to say
    chosen, caught = fallback_warnings("cuda")
    assert chosen == ["triton"] * 3
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "native cuda backend is missing" in message and "built without it (built: ['cpu']" in message
    assert "CUDA toolkit" in message and "--no-build-isolation" in message
    assert fallback_warnings("cuda")[1] == []


def test_an_extension_that_fails_to_load_names_its_error(fresh, monkeypatch):
    monkeypatch.setattr(native, "BUILT_BACKENDS", frozenset())
    monkeypatch.setattr(native, "_C", None)
    monkeypatch.setattr(native, "LOAD_ERROR", "actfocus_kernels._C exists but failed to import: ImportError: "
                        "undefined symbol _ZN3c10")
    _, caught = fallback_warnings("cpu", calls=1)
    assert len(caught) == 1
    assert "undefined symbol _ZN3c10" in str(caught[0].message)
    assert "rebuild it against this torch" in str(caught[0].message)


def test_an_explicit_missing_backend_is_an_error_not_a_fallback(fresh, monkeypatch):
    monkeypatch.setattr(native, "BUILT_BACKENDS", frozenset())
    monkeypatch.setattr(native, "_C", None)
    monkeypatch.setattr(native, "LOAD_ERROR", None)
    with pytest.raises(ValueError, match="backend='cpu' is not available: .*--no-build-isolation"):
        resolve_backend("cpu", torch.device("cpu"))
