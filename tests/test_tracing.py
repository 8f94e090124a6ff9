"""The tools models go through: torch.fx and torchvision's feature extraction, TorchScript, ONNX."""

import io
import warnings

import pytest
import torch
from torch import nn

import dropblock_cuda
from dropblock_cuda import DropBlock1d, DropBlock2d, DropBlock3d, drop_block1d, drop_block2d, drop_block3d
from helpers import assert_equal

MODULES = [
    (DropBlock1d, drop_block1d, (2, 3, 30)),
    (DropBlock2d, drop_block2d, (2, 3, 12, 12)),
    (DropBlock3d, drop_block3d, (2, 3, 6, 7, 8)),
]


def net(p=0.3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        DropBlock2d(p, 3, shared_channels=True),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        DropBlock2d(p, (3, 2)),
    )


def seeded(fn, *args, seed=0):
    torch.manual_seed(seed)
    return fn(*args)


def assert_same_gradient(model, other):
    """`other` (a traced or scripted `model`) gives the eager gradient for the same seed."""
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    seeded(model, x).sum().backward()
    eager_grad = x.grad
    x.grad = None
    seeded(other, x).sum().backward()
    assert_equal(x.grad, eager_grad)


# --- torch.fx ----------------------------------------------------------------------------------


def call_nodes(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("cls, function, shape", MODULES)
@pytest.mark.parametrize("training", [True, False])
def test_module_traces_as_one_call_node(cls, function, shape, training):
    module = cls(0.3, 3, gamma_scale=0.5).train(training)
    traced = torch.fx.symbolic_trace(module)
    (node,) = call_nodes(traced)
    assert node.target is function
    assert node.args[5] is training and node.kwargs["gamma_scale"] == 0.5
    x = torch.randn(shape)
    assert_equal(seeded(traced, x), seeded(module, x))
    if not training:
        assert traced(x) is x


def test_function_traces_as_one_call_node():
    def f(x):
        return drop_block2d(x, 0.2, 5, shared_channels=True) * 2

    traced = torch.fx.symbolic_trace(f)
    assert [n.target for n in call_nodes(traced)][0] is drop_block2d
    x = torch.randn(2, 3, 10, 10)
    assert_equal(seeded(traced, x), seeded(f, x))


def test_traced_model_gives_the_eager_result_and_gradient():
    model = net()
    traced = torch.fx.symbolic_trace(model)
    assert sum(n.target is drop_block2d for n in call_nodes(traced)) == 2
    assert_same_gradient(model, traced)


def test_tracing_with_a_generator_is_refused():
    def f(x):
        return drop_block2d(x, 0.2, 3, generator=torch.Generator())

    with pytest.raises(TypeError, match="generator"):
        torch.fx.symbolic_trace(f)


def test_torchvision_feature_extraction():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = net()
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(model)
    assert "1.drop_block2d" in train_nodes and "4.drop_block2d" in eval_nodes
    extractor = feature_extraction.create_feature_extractor(model, {"1": "dropped", "4": "out"})
    x = torch.randn(2, 3, 10, 10)
    features = seeded(extractor, x)
    assert_equal(features["out"], seeded(model, x))
    extractor.eval()
    model.eval()
    assert_equal(extractor(x)["dropped"], model[0](x))


@pytest.mark.parametrize("cls, function, shape", MODULES)
def test_is_leaf_node_like_torchvision(cls, function, shape):
    # torchvision's TestDropBlock.test_is_leaf_node: the op is one node besides the input.
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(cls(0.1, 3))
    assert len(train_nodes) == len(eval_nodes) == 2


# --- TorchScript -------------------------------------------------------------------------------


def script(module):
    with warnings.catch_warnings():  # torch >= 2.10 deprecates torch.jit.script (it still works)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


@pytest.mark.parametrize("cls, function, shape", MODULES)
def test_scripted_module_draws_the_eager_masks(cls, function, shape):
    module = cls(0.3, 3, gamma_scale=0.5)
    scripted = script(module)
    x = torch.randn(shape)
    assert_equal(seeded(scripted, x), seeded(module, x))
    assert not torch.equal(seeded(scripted, x, seed=1), seeded(scripted, x, seed=2))  # fresh masks per call
    scripted.eval()
    assert scripted(x) is x


def test_scripted_model_trains_and_matches_eager():
    model = net()
    assert_same_gradient(model, script(model))
    with_options = script(nn.Sequential(DropBlock2d(0.2, 3, inplace=True, scale_by_keep=False, eps=0.5)))
    y = torch.rand(2, 3, 9, 9) + 1
    expected = seeded(nn.Sequential(DropBlock2d(0.2, 3, scale_by_keep=False, eps=0.5)), y.clone())
    out = seeded(with_options, y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)


def test_integer_settings_script():
    # p and eps are plain attributes: a user may set ints, which TorchScript would type as int.
    module = DropBlock2d(0.3, 3)
    module.p, module.eps = 0, 1
    x = torch.randn(2, 3, 8, 8)
    assert script(module)(x) is x  # p == 0: the input itself
    module.p = 1
    assert_equal(seeded(script(module), x), seeded(module, x))


def test_a_module_pickled_by_version_0_1_loads():
    # torch.save(model) pickles the module's __dict__; 0.1 kept block_size plain and had neither
    # gamma_scale nor scale_by_keep.
    module = DropBlock2d(0.3, (3, 2))
    state = {
        k: v
        for k, v in module.__dict__.items()
        if k not in ("_block_size", "_block_sizes", "gamma_scale", "scale_by_keep")
    }
    state["block_size"] = (3, 2)
    old = DropBlock2d.__new__(DropBlock2d)
    old.__setstate__(state)
    assert (old.block_size, old.gamma_scale, old.scale_by_keep) == ((3, 2), 1.0, True)
    x = torch.randn(2, 3, 8, 8)
    assert_equal(seeded(old, x), seeded(module, x))
    assert repr(old) == repr(module)


def test_scripted_module_validates_as_eagerly():
    scripted = script(DropBlock2d(0.3, 3))
    scripted.p = 1.5
    with pytest.raises(torch.jit.Error, match="p: drop probability has to be between 0 and 1"):
        scripted(torch.randn(1, 1, 5, 5))
    scripted.p = 0.3
    with pytest.raises(torch.jit.Error, match="input: expected a 4-d tensor"):
        scripted(torch.randn(1, 1, 5))
    with pytest.raises(torch.jit.Error, match="input: expected a float32"):
        scripted(torch.ones(1, 1, 5, 5, dtype=torch.int64))
    scripted.eps = -1.0
    with pytest.raises(torch.jit.Error, match="eps"):
        scripted(torch.randn(1, 1, 5, 5))


def test_scripted_model_saves_and_loads(tmp_path):
    scripted = script(net())
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, 10, 10)
    assert_equal(seeded(loaded, x), seeded(scripted, x))


# --- ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_in_eval_mode_has_no_dropblock(dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = net().eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 10, 10),), str(path), dynamo=dynamo)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops and "Relu" in ops
    assert not any("drop" in node.op_type.lower() or node.domain == "dropblock_cuda" for node in graph.node)


def test_onnx_export_in_training_mode_names_the_fix():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = net().train()
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 10, 10),), io.BytesIO(), dynamo=True)
    error = info.value
    messages = [str(error)] + [str(e) for e in (error.__cause__, error.__context__) if e is not None]
    assert any("model.eval()" in m for m in messages), messages


def test_onnx_export_flag_is_read():
    # The check the functions make during an export (torch.onnx.is_in_onnx_export is folded to
    # False by Dynamo, so the exporter's own flag is read too).
    from dropblock_cuda import functional

    assert not functional._in_onnx_export(False) and not functional._in_onnx_export(True)
    if functional._onnx_flags is not None:
        functional._onnx_flags._is_onnx_exporting = True
        try:
            with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
                drop_block2d(torch.randn(1, 1, 4, 4), 0.5, 2)
            assert drop_block2d(torch.randn(1, 1, 4, 4), 0.5, 2, training=False) is not None
        finally:
            functional._onnx_flags._is_onnx_exporting = False
    assert dropblock_cuda.drop_block2d(torch.ones(1, 1, 4, 4), 0.5, 2).shape == (1, 1, 4, 4)
