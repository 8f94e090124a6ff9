"""DropBlock with autograd's saved-tensor hooks, activation checkpointing, autocast, and (with a
GPU) CUDA graphs and torch.compile on CUDA.

The CUDA tests skip without a CUDA device; nothing touches the GPU at import.
"""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropblock_cuda
from dropblock_cuda import DropBlock2d, LinearScheduler
from helpers import requires_cuda


def block(p=0.3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), DropBlock2d(p, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))


def classifier(p):
    """A small CNN of two classes; its DropBlock layer is model[1]."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        DropBlock2d(p, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


# --- saved_tensors_hooks ----------------------------------------------------------------------


def test_saved_tensors_are_the_packed_mask_and_the_scale():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = dropblock_cuda.drop_block2d(x, 0.3, 3)
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.uint8, (2 * 3 * 8 * 8 // 8,)), (torch.float64, ())]
    # Neither the input nor an input-sized float mask is kept for backward.
    assert all(t.numel() < x.numel() for t in saved)
    y.sum().backward()
    keep = y.detach() != 0
    assert torch.equal(x.grad, keep * saved[1].float())  # grad = keep * scale


def test_saved_tensors_hooks_can_move_and_restore_them():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.dtype)
        return ("moved", t.clone())  # any storage of one's own: offloading, compression...

    def unpack(stored):
        assert stored[0] == "moved"
        return stored[1]

    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = dropblock_cuda.drop_block2d(x, 0.3, 3)
    y.backward(torch.ones_like(y))
    hooked_grad = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    dropblock_cuda.drop_block2d(x, 0.3, 3).backward(torch.ones_like(y))
    assert packed == [torch.uint8, torch.float64]
    assert torch.equal(hooked_grad, x.grad)

    # torch's own hook, save_on_cpu, works as well (trivially on the CPU).
    x.grad = None
    torch.manual_seed(5)
    with torch.autograd.graph.save_on_cpu():
        z = dropblock_cuda.drop_block2d(x, 0.3, 3)
    z.backward(torch.ones_like(z))
    assert torch.equal(hooked_grad, x.grad)


# --- activation checkpointing -----------------------------------------------------------------


def _grads(model, x, use_checkpoint, **kwargs):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    out = checkpoint(model, x, use_reentrant=False, **kwargs) if use_checkpoint else model(x)
    out.square().sum().backward()
    return out.detach(), x.grad, [p.grad.clone() for p in model.parameters()]


def test_checkpoint_recomputes_the_same_mask():
    torch.manual_seed(0)
    model = block()
    x = torch.randn(2, 3, 10, 10)
    torch.manual_seed(42)
    plain = _grads(model, x, use_checkpoint=False)
    torch.manual_seed(42)
    checkpointed = _grads(model, x, use_checkpoint=True)
    # checkpoint preserves the RNG state for the recomputation: the same key, the same mask.
    assert torch.equal(plain[0], checkpointed[0])
    assert torch.equal(plain[1], checkpointed[1])
    for a, b in zip(plain[2], checkpointed[2]):
        assert torch.equal(a, b)


def test_checkpoint_without_rng_preservation_draws_another_mask():
    # The trap preserve_rng_state=True avoids: the recomputation draws a new key, so the
    # backward would go through another mask than the forward's.
    torch.manual_seed(0)
    model = block(p=0.5)
    x = torch.randn(2, 3, 10, 10)
    torch.manual_seed(42)
    plain = _grads(model, x, use_checkpoint=False)
    torch.manual_seed(42)
    unpreserved = _grads(model, x, use_checkpoint=True, preserve_rng_state=False)
    assert torch.equal(plain[0], unpreserved[0])  # same forward
    assert not torch.equal(plain[1], unpreserved[1])  # another mask in the recomputation


# --- autocast ---------------------------------------------------------------------------------


def _train_under_autocast(dtype):
    torch.manual_seed(0)
    model = classifier(0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dtypes = []
    model[1].register_forward_hook(lambda module, args, output: dtypes.append((args[0].dtype, output.dtype)))
    losses = []
    for _ in range(3):
        x = torch.randn(4, 3, 12, 12)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert dtypes == [(dtype, dtype)] * 3  # DropBlock runs in (and returns) the conv's dtype
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))


def test_autocast_cpu_bfloat16_trains():
    _train_under_autocast(torch.bfloat16)


def test_autocast_cpu_float16_trains():
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            probe = nn.functional.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))
    except RuntimeError as error:  # older torch: CPU autocast knows bfloat16 only
        pytest.skip(f"CPU autocast has no float16 here: {error}")
    if probe.dtype != torch.float16:
        pytest.skip("CPU autocast does not cast convolutions to float16 here")
    _train_under_autocast(torch.float16)


# --- CUDA graphs and torch.compile on CUDA (need a GPU) ---------------------------------------


def _cuda_model(p=0.2):
    """A small CNN on the GPU, and the list its DropBlock layer appends its outputs to."""
    torch.manual_seed(0)
    model = classifier(p).cuda()
    outputs = []
    model[1].register_forward_hook(lambda module, args, output: outputs.append(output))
    return model, outputs


@requires_cuda
def test_cuda_graph_captured_training_step_draws_fresh_masks():
    model, outputs = _cuda_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    static_x = torch.randn(4, 3, 16, 16, device="cuda")
    static_target = torch.tensor([0, 1, 0, 1], device="cuda")

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(static_x), static_target)
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up outside the capture
            train_step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    outputs.clear()
    with torch.cuda.graph(graph):
        static_loss = train_step()
    (captured,) = outputs  # the DropBlock output tensor the graph rewrites on every replay

    masks, losses = [], []
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        masks.append((captured != 0).cpu())
        losses.append(static_loss.item())
    for mask in masks:
        assert mask.any() and not mask.all()
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not torch.equal(masks[i], masks[j])  # a new key on every replay
    assert all(torch.isfinite(torch.tensor(losses)))

    # Replays follow torch.manual_seed like eager calls do.
    torch.cuda.manual_seed(7)
    graph.replay()
    first = (captured != 0).cpu()
    torch.cuda.manual_seed(7)
    graph.replay()
    assert torch.equal(first, (captured != 0).cpu())


@requires_cuda
def test_compile_cuda_fullgraph_fresh_masks_and_backward(fresh_dynamo):
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    drop = DropBlock2d(0.3, 3)
    compiled = torch.compile(drop, fullgraph=True, backend=counter)
    x = torch.ones(4, 3, 16, 16, device="cuda", requires_grad=True)
    y1 = compiled(x)
    y1.sum().backward()
    assert torch.equal(x.grad, y1.detach())  # the backward goes through the forward's mask
    y2 = compiled(x)
    assert counter.frame_count == 1
    assert (y1 == 0).any() and not torch.equal(y1 != 0, y2 != 0)
    torch.manual_seed(3)
    a = compiled(x)
    torch.manual_seed(3)
    assert torch.equal(a, compiled(x))


@requires_cuda
def test_compile_cuda_reduce_overhead_trains_with_a_scheduled_p(fresh_dynamo):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = classifier(0.0).cuda()
    scheduler = LinearScheduler(model, stop_p=0.3, total_steps=6)
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = torch.compile(model, mode="reduce-overhead")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, 24, 24, device="cuda")
    target = torch.tensor([0, 1] * 4, device="cuda")
    for _ in range(10):  # the ramp, then p held at 0.3
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(compiled(x), target)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss).item()
        scheduler.step()
    assert model[1].p == 0.3
    assert counters["stats"]["unique_graphs"] - graphs_before <= 2  # the ramp does not recompile per p


@requires_cuda
def test_compile_cuda_reduce_overhead_fresh_masks_and_live_p(fresh_dynamo):
    drop = DropBlock2d(0.1, 3)
    compiled = torch.compile(drop, mode="reduce-overhead")
    x = torch.ones(8, 4, 32, 32, device="cuda")

    def run():
        with torch.no_grad():
            return compiled(x).clone()  # cudagraph outputs are overwritten by the next replay

    low = [run() for _ in range(3)]
    drop.p = 0.5
    high = [run() for _ in range(3)]
    for a, b in zip(low + high, low[1:] + high[1:]):
        assert not torch.equal(a != 0, b != 0)  # a fresh mask on every call
    low_rate = sum((y == 0).float().mean().item() for y in low) / 3
    high_rate = sum((y == 0).float().mean().item() for y in high) / 3
    assert 0.0 < low_rate < high_rate  # the graph reads the current p


@requires_cuda
def test_compile_cuda_dynamic_shapes_one_graph_for_every_size(fresh_dynamo):
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    model = nn.Sequential(DropBlock2d(0.3, 3), nn.ReLU(), DropBlock2d(0.2, (3, 5), shared_channels=True)).cuda()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=counter)
    # Sizes all distinct and above 1: Dynamo specializes 0 and 1 and ties equal sizes together.
    for index, shape in enumerate([(2, 3, 16, 17), (3, 3, 20, 24), (5, 3, 31, 18), (4, 3, 9, 40)]):
        x = (torch.rand(shape, device="cuda") + 0.5).requires_grad_()
        y = compiled(x)
        y.sum().backward()
        assert y.shape == shape and (y == 0).any()
        assert torch.equal(x.grad == 0, y == 0)
        if index == 0:
            first = counter.frame_count  # a first compilation may hand the backend a graph twice
    assert counter.frame_count == first <= 2
