"""torch.compile and torch.export on the CPU: one graph, fresh masks, seeded runs, no recompiles for p.

Inductor compiles take seconds each on a small machine: the tensors are tiny and every test
compiles as few graphs as it can.
"""

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import dropblock_cuda
from helpers import assert_equal
from dropblock_cuda import DropBlock2d, LinearScheduler


pytestmark = pytest.mark.usefixtures("fresh_dynamo")

# Dynamo keeps a float argument symbolic (a graph input) from torch 2.6 on; before, each new value
# of p specializes and recompiles the graph (up to its cache limit). Eager use is the same.
p_is_a_graph_input = pytest.mark.skipif(torch.__version__ < "2.6", reason="torch < 2.6 recompiles for each p")


class TwoDropBlocks(nn.Module):
    """Two DropBlock layers applied to the same input, in one graph."""

    def __init__(self, p=0.3):
        super().__init__()
        self.first = DropBlock2d(p, 3)
        self.second = DropBlock2d(p, 3)

    def forward(self, x):
        return self.first(x), self.second(x)


def small_cnn(p=0.2):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), DropBlock2d(p, 3), nn.Conv2d(4, 2, 1))


def test_fullgraph_inductor_forward_and_backward():
    torch.manual_seed(0)
    model = small_cnn()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(2, 3, 10, 10)
    out = compiled(x)
    out.sum().backward()
    assert counter.frame_count == 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    # The gradient goes through the forward's mask: for DropBlock alone on ones, grad == output.
    torch._dynamo.reset()
    drop = DropBlock2d(0.3, 3)
    ones = torch.ones(2, 3, 10, 10, requires_grad=True)
    y = torch.compile(drop, fullgraph=True, backend="inductor")(ones)
    y.sum().backward()
    assert (y == 0).any() and (y != 0).any()
    assert torch.equal(ones.grad, y)


def test_compiled_masks_are_fresh_per_layer_and_per_call():
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(TwoDropBlocks(), fullgraph=True, backend=counter)
    x = torch.ones(2, 3, 12, 12)
    a1, b1 = compiled(x)
    a2, b2 = compiled(x)
    assert counter.frame_count == 1
    masks = [(t != 0) for t in (a1, b1, a2, b2)]
    for m in masks:
        assert m.any() and not m.all()
    assert not torch.equal(masks[0], masks[1])  # two layers in one graph never share a key
    assert not torch.equal(masks[0], masks[2])  # consecutive calls draw new keys
    assert not torch.equal(masks[1], masks[3])

    # torch.manual_seed reproduces a compiled run (both layers, both calls).
    torch.manual_seed(123)
    first = [compiled(x) for _ in range(2)]
    torch.manual_seed(123)
    second = [compiled(x) for _ in range(2)]
    for (a, b), (c, d) in zip(first, second):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert counter.frame_count == 1


def test_compiled_eval_mode_is_identity():
    model = small_cnn().eval()
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(2, 3, 10, 10)
    assert torch.equal(compiled(x), model(x))
    assert torch.equal(compiled(x), model[3](model[1](model[0](x))))
    assert counter.frame_count == 1
    drop = DropBlock2d(0.5, 3).eval()
    assert torch.equal(torch.compile(drop, fullgraph=True, backend="eager")(x), x)


def test_export_eval_model_runs():
    model = small_cnn().eval()
    x = torch.randn(2, 3, 10, 10)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert not any("dropblock_cuda" in t for t in targets)  # eval: no DropBlock op left
    assert torch.equal(exported.module()(x), model(x))
    other = torch.randn(2, 3, 10, 10)
    assert torch.allclose(exported.module()(other), model(other))


def test_export_training_model_draws_masks():
    # Not needed for inference, but the ops trace: the exported program draws a key per call.
    drop = DropBlock2d(0.3, 3)
    x = torch.ones(2, 3, 12, 12)
    exported = torch.export.export(drop, (x,))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "dropblock_cuda.drop_block_mask.default" in targets
    run = exported.module()
    y1, y2 = run(x), run(x)
    assert (y1 == 0).any() and not torch.equal(y1, y2)


@p_is_a_graph_input
@pytest.mark.parametrize("backend", ["count", "inductor"])
def test_changing_p_compiles_at_most_twice(backend):
    counter = CompileCounter() if backend == "count" else CompileCounterWithBackend("inductor")
    drop = DropBlock2d(0.3, 3)
    compiled = torch.compile(drop, fullgraph=True, backend=counter)
    x = torch.ones(4, 2, 32, 32)
    fractions = {}
    for p in (0.3, 0.1, 0.2, 0.05, 0.15, 0.6):
        drop.p = p
        fractions[p] = (compiled(x) == 0).float().mean().item()
    assert counter.frame_count <= 2
    # The compiled graph reads the current p (not the one it was compiled with).
    assert fractions[0.05] < fractions[0.2] < fractions[0.6]


@p_is_a_graph_input
def test_functional_with_changing_p_compiles_at_most_twice():
    counter = CompileCounterWithBackend("inductor")

    @torch.compile(fullgraph=True, backend=counter)
    def f(x, p):
        return dropblock_cuda.drop_block2d(x, p, 3)

    x = torch.ones(2, 2, 16, 16)
    for p in (0.3, 0.1, 0.2, 0.4):
        assert (f(x, p) == 0).any()
    assert counter.frame_count <= 2


@p_is_a_graph_input
@pytest.mark.parametrize("backend", ["count", "inductor"])
def test_scheduler_ramp_compiles_at_most_twice(backend):
    counter = CompileCounter() if backend == "count" else CompileCounterWithBackend("inductor")
    model = small_cnn(p=0.0)
    scheduler = LinearScheduler(model, stop_p=0.25, total_steps=12)
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 10, 10)
    for _ in range(14):  # the whole ramp (p from 0 to 0.25), then two steps at stop_p
        optimizer.zero_grad()
        loss = compiled(x).square().mean()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        scheduler.step()
    assert model[2].p == 0.25
    assert counter.frame_count <= 2


@p_is_a_graph_input
def test_gamma_scale_keeps_p_a_graph_input_and_draws_the_eager_mask():
    """With gamma_scale != 1 the seed rate is p * gamma_scale. Taken as Python floats, torch 2.11's
    Dynamo could not keep the product symbolic and recompiled for every p (timm's stage-3 layers:
    gamma_scale 0.25, p ramped every step); it is taken on the tensor, the same double product."""
    model = nn.Sequential(DropBlock2d(0.0, 3, gamma_scale=0.25), nn.ReLU(), DropBlock2d(0.0, 3, gamma_scale=0.5))
    counter = CompileCounterWithBackend("aot_eager")  # aot_eager draws the key as eager does
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.ones(2, 3, 16, 16)
    for p in (0.0, 0.3, 0.6, 0.9, 1.0):
        model[0].p = model[2].p = p
        torch.manual_seed(7)
        got = compiled(x)
        torch.manual_seed(7)
        assert_equal(got, model(x))
        assert (got == 0).any() == (p > 0)
    assert counter.frame_count <= 2


def test_compiled_inplace_writes_into_the_input():
    drop = DropBlock2d(0.3, 3, inplace=True)
    compiled = torch.compile(drop, fullgraph=True, backend="aot_eager")
    x = torch.ones(2, 3, 12, 12)
    with torch.no_grad():
        y = compiled(x)
    assert (x == 0).any() and torch.equal(x, y)  # the input holds the result
    # Under autograd (a non-leaf input), the write is recorded and the gradient uses the mask.
    leaf = torch.ones(2, 3, 12, 12, requires_grad=True)
    out = compiled(leaf * 1.0)
    out.sum().backward()
    assert torch.equal(leaf.grad, out.detach())


def test_compiled_autograd_traces_the_backward_in_one_graph():
    # The C++ autograd node declares itself traceable: compiled autograd captures its backward
    # (drop_block_apply on the saved mask) inside the graph instead of breaking around it.
    from torch._dynamo import compiled_autograd

    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    grad = torch.randn(2, 3, 16, 16)
    y = dropblock_cuda.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(3))
    counter = CompileCounterWithBackend("eager")
    enable = getattr(compiled_autograd, "_enable", None) or compiled_autograd.enable  # torch < 2.6: enable
    with enable(torch.compile(backend=counter, fullgraph=True)):
        y.backward(grad)
    assert counter.frame_count == 1
    expected = dropblock_cuda.drop_block2d(grad, 0.3, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x.grad, expected)


# --- dynamic shapes ----------------------------------------------------------------------------

# Batch, height and width all different from each other and from 0/1 (Dynamo specializes sizes 0
# and 1, and "duck sizing" ties equal sizes together), so that one graph serves them all.
DYNAMIC_SHAPES = [(2, 3, 16, 17), (3, 3, 20, 24), (5, 3, 31, 18), (4, 3, 9, 40)]


def assert_one_scale(y, x):
    """y is x * keep * scale for one scale: the mask was drawn and applied whatever the shape."""
    ratios = (y[y != 0] / x[y != 0]).detach()
    assert (y == 0).any() and ratios.numel() > 0
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_dynamic_true_one_graph_for_every_size(backend):
    model = nn.Sequential(DropBlock2d(0.3, 3), nn.ReLU(), DropBlock2d(0.2, (3, 5), shared_channels=True))
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=counter)
    for shape in DYNAMIC_SHAPES:
        x = (torch.rand(shape) + 0.5).requires_grad_()
        y = compiled(x)
        assert y.shape == shape
        assert_one_scale(y, x)
        y.sum().backward()
        assert_equal(x.grad == 0, y == 0)
        if shape == DYNAMIC_SHAPES[0]:
            # The first compilation may hand the backend a graph twice (Dynamo restarts its analysis
            # once to specialize the float settings); what must not happen is a compilation per size.
            first = counter.frame_count
            assert first <= 2
    assert counter.frame_count == first


def test_mark_dynamic_one_graph_for_every_size():
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(small_cnn(), fullgraph=True, backend=counter)
    first = None
    for shape in DYNAMIC_SHAPES:
        x = torch.randn(shape)
        for dim in (0, 2, 3):
            torch._dynamo.mark_dynamic(x, dim)
        assert compiled(x).shape == (shape[0], 2, *shape[2:])
        first = counter.frame_count if first is None else first
    assert counter.frame_count == first <= 2


def test_export_with_dims_in_training_mode():
    from torch.export import Dim

    model = nn.Sequential(DropBlock2d(0.3, 3), nn.ReLU())
    x = torch.rand(2, 3, 16, 17) + 0.5
    dims = {0: Dim("batch", min=2), 2: Dim("height", min=4), 3: Dim("width", min=4)}
    run = torch.export.export(model, (x,), dynamic_shapes=({**dims},)).module()
    for shape in DYNAMIC_SHAPES:
        x = torch.rand(shape) + 0.5
        y = run(x)
        assert y.shape == shape
        assert_one_scale(y, x)
