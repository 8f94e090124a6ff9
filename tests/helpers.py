import os

import numpy as np
import torch

import dropblock_cuda  # noqa: F401
from dropblock_cuda.functional import _draw_seed
from reference import keep_mask, unpack_mask

ops = torch.ops.dropblock_cuda


def env_finding_package(**variables):
    """os.environ plus `variables`, with PYTHONPATH leading to the dropblock_cuda these tests
    import (installed, or built in place): for subprocesses run outside the source tree."""
    package_parent = os.path.dirname(os.path.dirname(dropblock_cuda.__file__))
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def assert_equal(actual, expected):
    """torch.equal, failing with how many elements differ and where the first one is."""
    if torch.equal(actual, expected):
        return
    actual = actual.detach().cpu()
    expected = expected.detach().cpu()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"shape/dtype {tuple(actual.shape)} {actual.dtype} vs {tuple(expected.shape)} {expected.dtype}"
    where = (actual != expected).nonzero()  # NaN differs from NaN, as in torch.equal
    first = tuple(where[0].tolist())
    raise AssertionError(f"{len(where)} of {actual.numel()} elements differ; first at {first}: "
                         f"{actual[first].item()!r} vs {expected[first].item()!r}")


def key_of(generator):
    """The Philox key the public functions draw from `generator` for their next call."""
    return int(_draw_seed(generator.device, generator))


def mask_of(x, key, p, block_size, shared_channels=False, eps=1e-6):
    """The op's keep mask as a bool array (planes, *spatial), and its scale."""
    seed = torch.tensor(key, dtype=torch.int64, device=x.device)
    mask, scale = ops.drop_block_mask(x, seed, torch.tensor(p, dtype=torch.float64, device=x.device), list(block_size), eps, shared_channels)
    planes = x.shape[0] if shared_channels else x.shape[0] * x.shape[1]
    spatial = tuple(x.shape[2:])
    bits = planes * int(np.prod(spatial))
    return unpack_mask(mask.cpu().numpy(), bits).reshape((planes,) + spatial), scale.item()


def reference_mask(shape, key, p, block_size, shared_channels=False):
    return keep_mask(tuple(shape), tuple(block_size), p, key, shared_channels)


def keep_of_output(x, y):
    """Per-element keep flags recovered from an output of an input with no zeros."""
    return y != 0
