import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "huge: needs tensors over 2^31 elements (GPU check; slow on CPU)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one (given by the hook below)")


def pytest_collection_modifyitems(config, items):
    """Every test that skips for want of a CUDA device (a skipif whose reason says "CUDA device":
    requires_cuda, requires_two_gpus) carries the `cuda` marker, so that benchmarks/gpu_check.sh
    selects the CUDA tests with `-m cuda` whatever their names (tests/test_benchmark.py counts them)."""
    for item in items:
        if any("CUDA device" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture
def fresh_dynamo():
    """torch.compile tests start and end with empty Dynamo caches (compile counts stay exact)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def mask_kernel():
    """Sets the CUDA mask path for one test: mask_kernel("scatter"); the setting found comes back after."""
    import dropblock_cuda  # noqa: F401  (registers the op)

    set_kernel = torch.ops.dropblock_cuda._set_cuda_mask_kernel
    previous = set_kernel("auto")
    set_kernel(previous)
    yield set_kernel
    set_kernel(previous)


@pytest.fixture(autouse=True)
def restore_rng_state():
    """Tests that seed torch leave the global RNG as they found it."""
    cpu_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    yield
    torch.set_rng_state(cpu_state)
    torch.set_num_threads(threads)
