"""convert_dropblock: torchvision's and timm's DropBlock modules swapped for ours, settings kept."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import dropblock_cuda
from dropblock_cuda import DropBlock2d, DropBlock3d, convert_dropblock

try:
    import torchvision.ops as torchvision_ops
except ImportError:  # the tests that need it skip
    torchvision_ops = None

requires_torchvision = pytest.mark.skipif(torchvision_ops is None, reason="needs torchvision")


def timm_layers():
    return pytest.importorskip("timm.layers")


def test_exported():
    assert dropblock_cuda.convert_dropblock is convert_dropblock
    assert "convert_dropblock" in dropblock_cuda.__all__


@requires_torchvision
def test_torchvision_2d_and_3d_keep_their_settings():
    model = nn.Sequential(
        nn.Conv2d(3, 3, 1),
        torchvision_ops.DropBlock2d(0.15, 5, inplace=True, eps=1e-4),
        torchvision_ops.DropBlock3d(0.25, 3, eps=1e-5),
    )
    model[2].eval()  # per-module mode is kept
    conv = model[0]
    assert convert_dropblock(model) is model
    assert model[0] is conv
    new2d, new3d = model[1], model[2]
    assert type(new2d) is DropBlock2d and type(new3d) is DropBlock3d  # 3d is a torchvision 2d subclass
    assert (new2d.p, new2d.block_size, new2d.inplace, new2d.eps, new2d.shared_channels) == (0.15, 5, True, 1e-4, False)
    assert (new3d.p, new3d.block_size, new3d.inplace, new3d.eps, new3d.shared_channels) == (0.25, 3, False, 1e-5, False)
    assert new2d.training and not new3d.training


class Nested(nn.Module):
    def __init__(self, shared):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1), shared)
        self.blocks = nn.ModuleDict({"a": nn.ModuleList([nn.ReLU(), torchvision_ops.DropBlock2d(0.2, 7)])})
        self.again = shared

    def forward(self, x):
        x = self.stem(x)
        for layer in self.blocks["a"]:
            x = layer(x)
        return self.again(x)


@requires_torchvision
def test_nested_model_and_shared_module():
    shared = torchvision_ops.DropBlock2d(0.1, 3)
    model = Nested(shared)
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    before = model(x)
    convert_dropblock(model)
    assert type(model.stem[1]) is DropBlock2d and model.stem[1].p == 0.1
    assert type(model.blocks["a"][1]) is DropBlock2d and model.blocks["a"][1].block_size == 7
    assert model.again is model.stem[1]  # still one shared module
    assert not any(type(m).__module__.startswith("torchvision") for m in model.modules())
    assert not model.stem[1].training
    assert torch.equal(model(x), before)  # eval: the identity, as before
    model.train()
    assert (model(torch.ones(2, 3, 9, 9)) == 0).any()


@requires_torchvision
def test_top_level_module_is_replaced_and_returned():
    module = torchvision_ops.DropBlock2d(0.3, 3).eval()
    new = convert_dropblock(module)
    assert type(new) is DropBlock2d and new is not module
    assert new.p == 0.3 and not new.training


def test_models_without_dropblock_and_our_own_modules_are_untouched():
    ours = DropBlock2d(0.1, 3)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), ours)
    assert convert_dropblock(model) is model and model[1] is ours
    assert convert_dropblock(ours) is ours
    with pytest.raises(TypeError, match="model"):
        convert_dropblock("not a module")


@requires_torchvision
def test_subclasses_are_left_alone():
    class Custom(torchvision_ops.DropBlock2d):
        def forward(self, input):
            return input * 2

    model = nn.Sequential(Custom(0.1, 3))
    convert_dropblock(model)
    assert type(model[0]) is Custom


def test_timm_settings_are_mapped():
    layers = timm_layers()
    model = nn.Sequential(
        layers.DropBlock2d(drop_prob=0.2, block_size=5),
        layers.DropBlock2d(drop_prob=0.1, block_size=3, couple_channels=False, inplace=True),
        layers.DropBlock2d(drop_prob=0.0, block_size=7),
    )
    model[1].eval()
    convert_dropblock(model)
    first, second, third = model
    assert all(type(m) is DropBlock2d for m in model)
    assert (first.p, first.block_size, first.inplace, first.shared_channels) == (0.2, 5, False, True)
    assert first.eps == DropBlock2d(0.1, 3).eps  # timm has no eps: our default
    assert (second.p, second.block_size, second.inplace, second.shared_channels) == (0.1, 3, True, False)
    assert first.training and not second.training
    assert third.p == 0.0


def test_timm_top_level_and_same_law():
    layers = timm_layers()
    new = convert_dropblock(layers.DropBlock2d(drop_prob=0.3, block_size=3))
    assert type(new) is DropBlock2d and new.shared_channels
    y = new(torch.ones(2, 4, 16, 16))
    keep = y != 0
    assert torch.equal(keep, keep[:, :1].expand_as(keep))  # couple_channels: one mask per sample


@requires_torchvision
@pytest.mark.parametrize("option, value", [("with_noise", True), ("gamma_scale", 20.0)])  # 0.1 * 20 > 1
def test_timm_unsupported_options_are_refused(option, value):
    layers = timm_layers()
    timm_block = layers.DropBlock2d(drop_prob=0.1, block_size=3, **{option: value})
    other = torchvision_ops.DropBlock2d(0.1, 3)
    model = nn.Sequential(other, nn.Sequential(timm_block))
    with pytest.raises(ValueError, match=option) as info:
        convert_dropblock(model)
    assert "'1.0'" in str(info.value)  # names where the module is
    assert model[0] is other and model[1][0] is timm_block  # refused: nothing was changed
    with pytest.raises(ValueError, match=option):
        convert_dropblock(timm_block)


def test_torchscript_models_are_refused():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), DropBlock2d(0.1, 3))
    for compiled in (torch.jit.script(model), torch.jit.trace(model.eval(), torch.ones(1, 2, 4, 4))):
        with pytest.raises(TypeError, match="TorchScript"):
            convert_dropblock(compiled)


def test_works_without_torchvision_and_timm():
    # A fresh interpreter where importing torchvision or timm fails.
    code = textwrap.dedent("""
        import sys
        sys.modules["torchvision"] = None
        sys.modules["timm"] = None
        import torch
        import dropblock_cuda
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), dropblock_cuda.DropBlock2d(0.1, 3))
        assert dropblock_cuda.convert_dropblock(model) is model
        assert "torchvision" not in sys.modules or sys.modules["torchvision"] is None
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_does_not_import_torchvision_or_timm():
    code = textwrap.dedent("""
        import sys
        import torch
        import dropblock_cuda
        dropblock_cuda.convert_dropblock(torch.nn.Sequential(torch.nn.ReLU()))
        print("torchvision" in sys.modules, "timm" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
