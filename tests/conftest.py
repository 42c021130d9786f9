import pytest
import torch


@pytest.fixture(autouse=True, scope="session")  # before any module-scoped fixture trains
def _one_thread():
    """One intra-op thread for the whole suite: the tiny models' matmuls are ~100x slower with 2 threads on a shared
    2-core machine (oversubscription), and learning assertions then see the same arithmetic whatever
    OMP_NUM_THREADS says. Subprocesses the tests start set OMP_NUM_THREADS=1 themselves."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
