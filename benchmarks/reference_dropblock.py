"""The seed article's pure-PyTorch DropBlock, corrected: the baseline this project started from.

The seed article is the blog post "DropBlock: A Better Dropout for CNN's", which builds DropBlock
from plain PyTorch ops in an ``nn.Module``: gamma from the paper's eq. 1 computed in
``calculate_gamma``, a Bernoulli(gamma) seed mask the size of the input, blocks grown from the
seeds by a stride-1 ``F.max_pool2d`` of kernel ``block_size`` padded by ``block_size // 2``, and
the rescale ``mask.numel() / mask.sum()``. The benchmarks time this corrected form (eager and
under ``torch.compile``) as the "article" implementation.

What the article's module gets wrong, and what this version does instead:

* ``__init__`` never calls ``super().__init__()``, so the module cannot even be constructed;
  here it does.
* ``p`` is used as a *keep* probability (``to_drop = (1 - p) / block_size**2``); here ``p`` is
  the *drop* probability, as in the paper's ``1 - keep_prob``, torchvision and timm.
* gamma uses only the last dimension (square maps) and the unclamped block size; here it is the
  paper's eq. 1 per dimension: ``p / (bh * bw) * (H * W) / ((H - bh + 1) * (W - bw + 1))``, with
  the block clamped to the map.
* seeds are drawn on the whole map and expanded with ``padding=block_size // 2`` (blocks leak
  past the valid region and even sizes give a shifted, larger output); here seeds are drawn on the
  valid region only, ``(H - bh + 1, W - bw + 1)``, and a seed at ``(i, j)`` drops the block
  ``[i, i + bh) x [j, j + bw)``, so every block lies inside the map and even sizes work.
* the rescale ``numel / sum`` divides by zero when everything is dropped; here
  ``numel / (eps + sum)``, with the sum taken in float32 (a bfloat16 sum of a large mask rounds).

The mask is per (sample, channel), as in torchvision and in ``dropblock_cuda``'s default.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def drop_block2d_reference(x: Tensor, p: float, block_size: int, eps: float = 1e-6, training: bool = True) -> Tensor:
    """DropBlock of an (N, C, H, W) tensor with drop probability ``p``, in plain PyTorch ops."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: drop probability has to be between 0 and 1, got {p}")
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got {x.dim()} dimensions")
    if not training or p == 0.0:
        return x
    n, c, h, w = x.shape
    bh, bw = min(block_size, h), min(block_size, w)
    vh, vw = h - bh + 1, w - bw + 1
    # Paper eq. 1: (1 - keep_prob) / block_size^2 * feat_size^2 / (feat_size - block_size + 1)^2.
    gamma = min(p / (bh * bw) * (h * w) / (vh * vw), 1.0)
    with torch.no_grad():
        # Bernoulli(gamma) seeds; `rand < gamma` rather than `bernoulli_(gamma)` so that torch.compile
        # keeps gamma symbolic instead of recompiling for every shape.
        seeds = (torch.rand((n, c, vh, vw), device=x.device) < gamma).to(x.dtype)
        # Pad by (block - 1) on every side, then a stride-1 max pool of the block size: output
        # position i sees seeds i - (block - 1) .. i, i.e. a seed at i drops i .. i + block - 1.
        seeds = F.pad(seeds, (bw - 1, bw - 1, bh - 1, bh - 1))
        dropped = F.max_pool2d(seeds, kernel_size=(bh, bw), stride=1)
        keep = 1.0 - dropped
        scale = keep.numel() / (eps + keep.sum(dtype=torch.float32))
        keep.mul_(scale.to(x.dtype))
    return x * keep


class DropBlock2dReference(nn.Module):
    """Module form of :func:`drop_block2d_reference`; ``p`` is the drop probability."""

    def __init__(self, p: float, block_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: drop probability has to be between 0 and 1, got {p}")
        self.p = p
        self.block_size = block_size
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return drop_block2d_reference(x, self.p, self.block_size, self.eps, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}, eps={self.eps}"
