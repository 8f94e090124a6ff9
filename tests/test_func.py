"""torch.func (grad, vjp, jvp, vmap, functional_call) and forward-mode AD through DropBlock."""

import copy

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call, grad, jvp, stack_module_state, vjp, vmap

from dropblock_cuda import DropBlock2d, drop_block2d
from dropblock_cuda import _functorch
from helpers import assert_equal


def positive(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.5


def reference_gradient(x, seed, **kwargs):
    """The gradient of sum(drop_block2d(x)) by plain autograd (the C++ formula) for this seed."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    drop_block2d(x, 0.3, 3, **kwargs).sum().backward()
    return x.grad


@pytest.mark.parametrize("kwargs", [{}, dict(shared_channels=True), dict(scale_by_keep=False, gamma_scale=0.5)])
def test_grad_equals_autograd(kwargs):
    x = positive((2, 3, 12, 12))
    torch.manual_seed(4)
    g = grad(lambda t: drop_block2d(t, 0.3, 3, **kwargs).sum())(x)
    assert_equal(g, reference_gradient(x, 4, **kwargs))


def test_vjp_and_jvp_are_the_apply_with_the_same_mask():
    x = positive((2, 3, 12, 12))
    cotangent = torch.randn(2, 3, 12, 12)
    torch.manual_seed(5)
    y, pullback = vjp(lambda t: drop_block2d(t, 0.3, 3), x)
    (vjp_grad,) = pullback(cotangent)
    keep_scale = y / x  # keep * scale, element by element
    torch.testing.assert_close(vjp_grad, cotangent * keep_scale)
    torch.manual_seed(5)
    y2, tangent_out = jvp(lambda t: drop_block2d(t, 0.3, 3), (x,), (cotangent,))
    assert_equal(y2, y)
    torch.testing.assert_close(tangent_out, cotangent * keep_scale)


def test_forward_mode_ad():
    x = positive((2, 3, 12, 12))
    tangent = torch.randn(2, 3, 12, 12)
    with forward_ad.dual_level():
        torch.manual_seed(6)
        dual = drop_block2d(forward_ad.make_dual(x, tangent), 0.3, 3)
        y, tangent_out = forward_ad.unpack_dual(dual)
    torch.testing.assert_close(tangent_out, tangent * (y / x))
    assert_equal(tangent_out == 0, y == 0)


def test_second_order():
    # The apply is linear: the gradient of a gradient that does not depend on x is zero, and
    # forward-over-reverse (a Hessian-vector product) runs.
    x = positive((1, 2, 8, 8))
    torch.manual_seed(7)
    hvp = jvp(grad(lambda t: (drop_block2d(t, 0.3, 3) ** 2).sum()), (x,), (torch.ones_like(x),))[1]
    torch.manual_seed(7)
    y = drop_block2d(x, 0.3, 3)
    assert_equal(hvp != 0, y != 0)
    torch.testing.assert_close(hvp, 2 * (y / x) ** 2)


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_under_grad(inplace):
    x = positive((2, 3, 10, 10))
    torch.manual_seed(8)
    g = grad(lambda t: drop_block2d(t * 1.0, 0.3, 3, inplace=inplace).sum())(x)
    assert_equal(g, reference_gradient(x, 8))


def test_vmap_randomness_modes():
    x = positive((4, 2, 3, 10, 10))  # 4 members of a batch of (2, 3, 10, 10) inputs
    different = vmap(lambda t: drop_block2d(t, 0.3, 3), randomness="different")(x)
    masks = [different[i] != 0 for i in range(4)]
    assert not all(torch.equal(masks[0], m) for m in masks[1:])
    same = vmap(lambda t: drop_block2d(t, 0.3, 3), randomness="same")(x)
    assert all(torch.equal(same[0] != 0, same[i] != 0) for i in range(4))
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda t: drop_block2d(t, 0.3, 3))(x)


def test_vmap_member_is_a_call_of_its_own():
    # With randomness="same" every member draws the one key, so each equals the plain call on it:
    # mask and scale counted per member, not over the stacked batch.
    x = positive((3, 2, 3, 10, 10))
    torch.manual_seed(9)
    batched = vmap(lambda t: drop_block2d(t, 0.3, 3), randomness="same")(x)
    for i in range(3):
        torch.manual_seed(9)
        assert_equal(batched[i], drop_block2d(x[i], 0.3, 3))


def test_model_ensemble_with_stack_module_state_trains():
    torch.manual_seed(0)
    models = [
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), DropBlock2d(0.2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)
        )
        for _ in range(3)
    ]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 4, 3, 8, 8)
    target = torch.tensor([0, 1, 0, 1])

    def loss(params, buffers, x):
        return nn.functional.cross_entropy(functional_call(base, (params, buffers), (x,)), target)

    grads = vmap(grad(loss), randomness="different")(params, buffers, x)
    assert set(grads) == set(params)
    assert all(g.shape == params[name].shape and torch.isfinite(g).all() for name, g in grads.items())
    assert grads["0.weight"].abs().sum() > 0


def test_plain_calls_keep_the_cpp_autograd():
    # Outside transforms the C++ autograd node is used (the cheap path), inside them the Python one.
    assert not _functorch.transforms_active()
    x = positive((1, 1, 6, 6)).requires_grad_()
    assert drop_block2d(x, 0.3, 3).grad_fn.name().startswith("torch::autograd::CppNode")
    seen = []
    grad(lambda t: seen.append(_functorch.transforms_active()) or drop_block2d(t, 0.3, 3).sum())(x.detach())
    with forward_ad.dual_level():
        seen.append(_functorch.transforms_active())
    assert seen == [True, True]
