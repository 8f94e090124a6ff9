"""python -m dropblock_cuda.demo writes a PNG."""

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from dropblock_cuda import demo

    out = tmp_path / "sub" / "demo.png"
    assert demo.main(["--out", str(out), "--seed", "3", "--block-sizes", "3,7"]) == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_demo_is_seedable():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dropblock_cuda import demo

    images = []
    for _ in range(2):
        fig = demo.make_figure(p=0.3, block_sizes=(5,), seed=7, image_size=64)
        images.append([ax.get_images()[0].get_array().copy() for ax in fig.axes if ax.get_images()])
        plt.close(fig)
    assert len(images[0]) == len(images[1]) >= 4
    for a, b in zip(*images):
        assert (a == b).all()
