import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The trainer's tiny model runs fastest on one thread (and leaves other jobs their cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
