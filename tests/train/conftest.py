import pytest
import torch


@pytest.fixture(autouse=True, scope="module")  # before the module-scoped reference runs
def _one_thread():
    """Tiny matmuls on a shared 2-core machine are ~100x slower with 2 intra-op threads (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
