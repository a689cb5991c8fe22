"""Shared fixtures: the backends of this machine and its test device (``devices.py``, imported
first: it switches the Triton interpreter on where there is no CUDA)."""
import pytest

from devices import BACKENDS, DEVICE


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def device():
    return DEVICE
