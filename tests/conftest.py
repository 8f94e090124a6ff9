import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "huge: needs tensors over 2^31 elements (GPU check; slow on CPU)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one")


@pytest.fixture
def fresh_dynamo():
    """torch.compile tests start and end with empty Dynamo caches (compile counts stay exact)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def restore_rng_state():
    """Tests that seed torch leave the global RNG as they found it."""
    cpu_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    yield
    torch.set_rng_state(cpu_state)
    torch.set_num_threads(threads)
