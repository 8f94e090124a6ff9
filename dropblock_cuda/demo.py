"""Visual demo: ``python -m dropblock_cuda.demo [--out PATH] [--seed N] [--p P]``.

Draws a PNG with a sample photograph next to ``nn.Dropout(p)`` and DropBlock at several block
sizes (one mask shared by the colour channels), and the keep masks DropBlock draws on a
1x16x56x56 feature map, per channel and shared. Needs matplotlib (imported only here, when the
demo runs); the photograph is matplotlib's bundled sample data, so no network is used.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

DEFAULT_OUT = os.path.join("benchmarks", "results", "demo.png")


def _load_image(size: int) -> torch.Tensor:
    """matplotlib's sample photograph as a (1, 3, H, W) float tensor in [0, 1], short side `size`."""
    import matplotlib.cbook as cbook
    import matplotlib.image as mpimg

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        array = mpimg.imread(fh, format="jpg")
    img = torch.from_numpy(array.copy()).float()
    if img.max() > 1.0:
        img = img / 255.0
    if img.dim() == 2:
        img = img[..., None].expand(-1, -1, 3)
    img = img[..., :3].permute(2, 0, 1)[None]
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    img = F.interpolate(
        img, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False
    )
    return img.clamp(0.0, 1.0)


def _mosaic(planes: torch.Tensor, cols: int, gap: int = 2) -> torch.Tensor:
    """(K, H, W) -> one (rows*(H+gap)-gap, cols*(W+gap)-gap) image, gaps filled with 0.5."""
    k, h, w = planes.shape
    rows = (k + cols - 1) // cols
    out = torch.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 0.5)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = planes[i]
    return out


def make_figure(p: float = 0.25, block_sizes: Sequence[int] = (3, 7, 15), seed: int = 0, image_size: int = 224):
    """The demo's matplotlib Figure (the caller saves or shows it)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from . import drop_block2d

    gen = torch.Generator().manual_seed(seed)
    img = _load_image(image_size)

    torch.manual_seed(seed)  # nn.Dropout draws from the default generator
    dropout = torch.nn.Dropout(p).train()
    dropped_pixels = dropout(img)

    panels = [("Original", img), (f"nn.Dropout(p={p:g})\n(each value on its own)", dropped_pixels)]
    for b in block_sizes:
        y = drop_block2d(img, p, b, shared_channels=True, generator=gen)
        panels.append((f"DropBlock p={p:g}, block {b}\n(shared_channels=True)", y))
    mid = sorted(block_sizes)[len(block_sizes) // 2] if block_sizes else 7
    y = drop_block2d(img, p, mid, generator=gen)
    panels.append((f"DropBlock p={p:g}, block {mid}\nper channel (default): colours drop apart", y))

    feature = torch.randn(1, 16, 56, 56, generator=gen)
    per_channel = drop_block2d(feature, p, 7, generator=gen) != 0
    shared = drop_block2d(feature, p, 7, shared_channels=True, generator=gen) != 0

    n_panels = len(panels) + 2
    cols = 4
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, y) in zip(axes.flat, panels):
        # Show which pixels survive at their original brightness (the 1/keep rescale would saturate).
        shown = torch.where(y != 0, img, torch.zeros_like(img)) if y is not img else img
        ax.imshow(shown[0].permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=10)
    flat = list(axes.flat)
    for ax, (title, mask) in zip(
        flat[len(panels) :],
        (
            (f"Keep mask of a 1x16x56x56 feature map\nper channel (default), block 7, p={p:g}", per_channel),
            (f"Keep mask of the same map\nshared_channels=True, block 7, p={p:g}", shared),
        ),
    ):
        kept = mask.float().mean().item()
        ax.imshow(_mosaic(mask[0].float(), cols=4).numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{title}\n16 channels, white = kept ({kept:.0%})", fontsize=10)
    fig.suptitle(f"Dropout vs DropBlock (dropblock_cuda), seed {seed}; dropped pixels are black", fontsize=12)
    fig.tight_layout()
    del matplotlib
    return fig


def main(argv: Optional[Sequence[str]] = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m dropblock_cuda.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--p", type=float, default=0.25, help="drop probability (default 0.25)")
    ap.add_argument("--block-sizes", default="3,7,15", help="comma-separated block sizes (default 3,7,15)")
    args = ap.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the demo needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [int(b) for b in args.block_sizes.split(",") if b.strip()]
    fig = make_figure(args.p, blocks, args.seed)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
