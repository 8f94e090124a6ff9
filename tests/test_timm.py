"""timm parity: gamma_scale and scale_by_keep, and timm's own drop_block_rate ResNets converted and trained."""

import numpy as np
import pytest
import torch
from torch import nn

from dropblock_cuda import DropBlock1d, DropBlock2d, DropBlock3d, LinearScheduler, convert_dropblock, drop_block2d
from helpers import assert_equal, key_of, reference_mask
from reference import seed_probability

timm = pytest.importorskip("timm")

_KEY_LOW, _KEY_HIGH = -(2**63), 2**63 - 1


def default_key(seed):
    """The key a DropBlock call without a generator draws right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return int(torch.randint(_KEY_LOW, _KEY_HIGH, (), dtype=torch.int64))


def positive(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.5


# --- gamma_scale and scale_by_keep on the functions and modules --------------------------------


@pytest.mark.parametrize("gamma_scale", [0.25, 0.5, 2.0])
def test_gamma_scale_is_a_factor_on_the_seed_rate_exactly(gamma_scale):
    shape, block, p = (2, 3, 20, 24), (5, 3), 0.3
    x = positive(shape)
    key = key_of(torch.Generator().manual_seed(7))
    y = drop_block2d(x, p, block, generator=torch.Generator().manual_seed(7), gamma_scale=gamma_scale)
    expected = reference_mask(shape, key, p * gamma_scale, block)
    np.testing.assert_array_equal((y != 0).reshape(expected.shape).numpy(), expected)
    # The law's seed probability is gamma_scale times the unscaled one, exactly (a power of two
    # scales a double exactly; the cap at 1 is not reached here).
    spatial = shape[2:]
    assert seed_probability(spatial, block, p * gamma_scale) == seed_probability(spatial, block, p) * gamma_scale


def test_gamma_scale_one_is_the_default_law():
    x = positive((2, 3, 16, 16))
    a = drop_block2d(x, 0.2, 3, generator=torch.Generator().manual_seed(1))
    b = drop_block2d(x, 0.2, 3, generator=torch.Generator().manual_seed(1), gamma_scale=1.0)
    assert_equal(a, b)


def test_scale_by_keep_false_keeps_values():
    x = positive((2, 3, 16, 16))
    y = drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(2), scale_by_keep=False)
    scaled = drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(2))
    keep = scaled != 0
    assert keep.any() and (~keep).any()
    assert_equal(y, torch.where(keep, x, torch.zeros_like(x)))
    # The gradient is the mask alone too.
    x = x.clone().requires_grad_()
    drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(2), scale_by_keep=False).sum().backward()
    assert_equal(x.grad, keep.float())


@pytest.mark.parametrize(
    "cls, shape", [(DropBlock1d, (2, 3, 40)), (DropBlock2d, (2, 3, 12, 12)), (DropBlock3d, (2, 3, 6, 6, 6))]
)
def test_modules_take_and_show_the_options(cls, shape):
    module = cls(0.2, 3, gamma_scale=0.25, scale_by_keep=False)
    assert (module.gamma_scale, module.scale_by_keep) == (0.25, False)
    assert "gamma_scale=0.25" in repr(module) and "scale_by_keep=False" in repr(module)
    assert "gamma_scale" not in repr(cls(0.2, 3)) and "scale_by_keep" not in repr(cls(0.2, 3))
    x = positive(shape)
    torch.manual_seed(3)
    y = module(x)
    expected = reference_mask(shape, default_key(3), 0.2 * 0.25, (3,) * (len(shape) - 2))
    np.testing.assert_array_equal((y != 0).reshape(expected.shape).numpy(), expected)
    assert_equal(y[y != 0], x[y != 0])  # not rescaled


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma_scale=-0.5), "gamma_scale"),
        (dict(gamma_scale=float("nan")), "gamma_scale"),
        (dict(gamma_scale=float("inf")), "gamma_scale"),
        (dict(gamma_scale=5.0), "gamma_scale"),  # p * gamma_scale = 1.5 > 1
    ],
)
def test_bad_gamma_scale_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DropBlock2d(0.3, 3, **kwargs)
    with pytest.raises(ValueError, match=match):
        drop_block2d(torch.ones(1, 1, 4, 4), 0.3, 3, **kwargs)


def test_gamma_scale_type_is_checked():
    with pytest.raises(TypeError, match="gamma_scale"):
        DropBlock2d(0.3, 3, gamma_scale="0.25")
    with pytest.raises(TypeError, match="gamma_scale"):
        drop_block2d(torch.ones(1, 1, 4, 4), 0.3, 3, gamma_scale=None)


def test_scheduler_ramps_p_and_keeps_gamma_scale():
    model = nn.Sequential(DropBlock2d(0.0, 5, gamma_scale=0.25), DropBlock2d(0.0, 3))
    scheduler = LinearScheduler(model, stop_p=0.1, total_steps=4)
    for _ in range(4):
        scheduler.step()
    assert [m.p for m in model] == [0.1, 0.1]
    assert [m.gamma_scale for m in model] == [0.25, 1.0]


# --- timm's modules and models -----------------------------------------------------------------


@pytest.mark.parametrize("gamma_scale, scale_by_keep, couple", [(0.25, True, True), (1.0, False, False)])
def test_convert_maps_timm_options(gamma_scale, scale_by_keep, couple):
    theirs = timm.layers.DropBlock2d(
        drop_prob=0.2, block_size=5, gamma_scale=gamma_scale, scale_by_keep=scale_by_keep, couple_channels=couple
    )
    ours = convert_dropblock(nn.Sequential(theirs))[0]
    assert type(ours) is DropBlock2d
    assert (ours.p, ours.block_size, ours.gamma_scale, ours.scale_by_keep, ours.shared_channels) == (
        0.2,
        5,
        gamma_scale,
        scale_by_keep,
        couple,
    )


def timm_model(name, rate=0.1):
    return convert_dropblock(timm.create_model(name, pretrained=False, num_classes=10, drop_block_rate=rate))


def dropblock_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DropBlock2d)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_drop_block_rate_resnets_convert(name):
    model = timm_model(name)
    layers = dropblock_layers(model)
    assert not any(isinstance(m, timm.layers.DropBlock2d) for m in model.modules())
    # timm's drop_blocks(): stage 3 block 5 at a quarter of the seed rate, stage 4 block 3.
    stage3 = [m for n, m in layers if n.startswith("layer3.")]
    stage4 = [m for n, m in layers if n.startswith("layer4.")]
    assert stage3 and stage4 and len(stage3) + len(stage4) == len(layers)
    assert all((m.p, m.block_size, m.gamma_scale, m.shared_channels) == (0.1, 5, 0.25, True) for m in stage3)
    assert all((m.p, m.block_size, m.gamma_scale, m.shared_channels) == (0.1, 3, 1.0, True) for m in stage4)


# timm builds DropBlock from drop_block_rate in its ResNet family (resnet.py) and in byobnet.py
# (GENet, RepVGG, ...: there it sits inside BatchNormAct2d as `bn.drop`).
TIMM_MODELS = ["resnet18", "resnet50", "gernet_s", "repvgg_a0"]


@pytest.mark.parametrize("name", ["gernet_s", "repvgg_a0"])
def test_timm_byobnet_drop_block_rate_converts(name):
    model = timm_model(name)
    layers = dropblock_layers(model)
    assert layers and not any(isinstance(m, timm.layers.DropBlock2d) for m in model.modules())
    assert {(m.block_size, m.gamma_scale) for _, m in layers} == {(5, 0.25), (3, 1.0)}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_resnet_layers_follow_the_law(name):
    """Each converted layer of the model, fed its real input, drops by the law at p * gamma_scale."""
    model = timm_model(name, rate=0.3)
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=n: inputs.setdefault(name, args[0].detach()))
        for n, m in dropblock_layers(model)
    ]
    model(torch.randn(2, 3, 96, 96))
    for hook in hooks:
        hook.remove()
    for name, layer in dropblock_layers(model):
        x = inputs[name].abs() + 0.5  # no zeros, so that the output shows the mask
        torch.manual_seed(11)
        y = layer(x)
        block = (layer.block_size,) * 2
        expected = reference_mask(x.shape, default_key(11), layer.p * layer.gamma_scale, block, shared_channels=True)
        keep = (y != 0)[:, :1].reshape(expected.shape).numpy()
        np.testing.assert_array_equal(keep, expected, err_msg=name)
        assert_equal(y != 0, (y != 0)[:, :1].expand_as(y))  # couple_channels: one mask per sample


def train_steps(model, steps=2, size=64):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = LinearScheduler(model, stop_p=0.1, total_steps=steps)
    losses = []
    for step in range(steps):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(step))
        target = torch.tensor([step % 10, (step + 3) % 10])
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses, scheduler


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_recipe_trains_eagerly(name):
    torch.manual_seed(0)
    model = timm_model(name)
    gamma_scales = [m.gamma_scale for _, m in dropblock_layers(model)]
    losses, scheduler = train_steps(model)
    assert all(np.isfinite(losses))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(p.grad is not None for p in model.parameters()) > 0
    assert [m.gamma_scale for _, m in dropblock_layers(model)] == gamma_scales  # the ramp keeps them
    assert all(m.p == scheduler.p == 0.1 for _, m in dropblock_layers(model))


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name, backend", [("resnet18", "inductor"), ("resnet50", "aot_eager")])
def test_timm_recipe_trains_compiled(name, backend):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = timm_model(name)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    losses, _ = train_steps(compiled, steps=3)
    assert all(np.isfinite(losses))
    # The ramp changes p every step: p is a graph input, so the graph is compiled at most twice.
    assert counter.frame_count <= 2
    # In eval mode DropBlock is the identity, compiled as eagerly.
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(compiled(x), model(x))
