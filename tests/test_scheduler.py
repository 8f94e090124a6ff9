"""LinearScheduler: the ramp, its end, resuming from a state_dict, argument checks.

The compiled ramp (at most two compilations) is in test_compile.py.
"""

import copy
import io
import math

import pytest
import torch
from torch import nn

import dropblock_cuda
from dropblock_cuda import DropBlock1d, DropBlock2d, DropBlock3d, LinearScheduler
from dropblock_cuda.modules import _DropBlockNd


class Custom(DropBlock2d):
    pass


def model_with_all_kinds():
    return nn.Sequential(
        nn.Conv2d(3, 3, 1),
        DropBlock2d(0.5, 3),
        nn.Sequential(nn.Identity(), DropBlock1d(0.5, 2)),
        nn.ModuleDict({"deep": nn.ModuleList([DropBlock3d(0.5, 2), Custom(0.5, 3)])}),
    )


def drop_ps(model):
    return [m.p for m in model.modules() if isinstance(m, _DropBlockNd)]


def test_exported():
    assert dropblock_cuda.LinearScheduler is LinearScheduler
    assert "LinearScheduler" in dropblock_cuda.__all__


def test_finds_every_dropblock_and_sets_start_p():
    model = model_with_all_kinds()
    scheduler = LinearScheduler(model, stop_p=0.2, total_steps=4)
    assert len(scheduler.modules) == 4
    assert drop_ps(model) == [0.0] * 4
    assert scheduler.p == 0.0
    LinearScheduler(model, stop_p=0.2, total_steps=4, start_p=0.05)
    assert drop_ps(model) == [0.05] * 4


def test_linear_ramp_then_hold():
    model = model_with_all_kinds()
    scheduler = LinearScheduler(model, stop_p=0.3, total_steps=6, start_p=0.06)
    seen = []
    for _ in range(9):
        returned = scheduler.step()
        assert drop_ps(model) == [returned] * 4
        seen.append(returned)
    expected = [0.06 + 0.24 * k / 6 for k in range(1, 7)] + [0.3] * 3
    assert all(math.isclose(a, b, abs_tol=1e-15) for a, b in zip(seen, expected))
    assert seen[5] == 0.3  # exactly stop_p at the end of the ramp
    assert all(a < b for a, b in zip(seen[:5], seen[1:6]))


def test_ramp_down_and_single_step():
    model = nn.Sequential(DropBlock2d(0.1, 3))
    scheduler = LinearScheduler(model, stop_p=0.0, total_steps=2, start_p=0.4)
    assert [scheduler.step(), scheduler.step(), scheduler.step()] == [0.2, 0.0, 0.0]
    scheduler = LinearScheduler(model, stop_p=0.1, total_steps=1)
    assert model[0].p == 0.0 and scheduler.step() == 0.1 and model[0].p == 0.1


def test_state_dict_resumes_where_it_stopped():
    model = model_with_all_kinds()
    scheduler = LinearScheduler(model, stop_p=0.25, total_steps=10, start_p=0.05)
    for _ in range(4):
        scheduler.step()
    state = scheduler.state_dict()
    assert state == {"last_step": 4, "start_p": 0.05, "stop_p": 0.25, "total_steps": 10}
    saved = copy.deepcopy(state)

    # A fresh model and scheduler (built with other settings) continue the saved ramp.
    resumed_model = model_with_all_kinds()
    resumed = LinearScheduler(resumed_model, stop_p=0.9, total_steps=3)
    resumed.load_state_dict(saved)
    assert drop_ps(resumed_model) == drop_ps(model)
    for _ in range(8):
        assert resumed.step() == scheduler.step()
        assert drop_ps(resumed_model) == drop_ps(model)
    assert resumed.state_dict() == scheduler.state_dict()

    # The state survives torch.save / torch.load (plain Python values only).
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == scheduler.state_dict()


def test_argument_checks_name_the_parameter():
    model = nn.Sequential(DropBlock2d(0.1, 3))
    for kwargs, name in [
        ({"stop_p": 1.5, "total_steps": 3}, "stop_p"),
        ({"stop_p": -0.1, "total_steps": 3}, "stop_p"),
        ({"stop_p": float("nan"), "total_steps": 3}, "stop_p"),
        ({"stop_p": 0.1, "total_steps": 3, "start_p": 2.0}, "start_p"),
        ({"stop_p": 0.1, "total_steps": 0}, "total_steps"),
        ({"stop_p": 0.1, "total_steps": -5}, "total_steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            LinearScheduler(model, **kwargs)
    with pytest.raises(TypeError, match="total_steps"):
        LinearScheduler(model, 0.1, 2.5)
    with pytest.raises(TypeError, match="stop_p"):
        LinearScheduler(model, "0.1", 2)
    with pytest.raises(TypeError, match="model"):
        LinearScheduler([DropBlock2d(0.1, 3)], 0.1, 2)
    with pytest.raises(ValueError, match="no DropBlock"):
        LinearScheduler(nn.Linear(2, 2), 0.1, 2)
    assert model[0].p == 0.1  # a refused scheduler changed nothing

    scheduler = LinearScheduler(model, 0.2, 4)
    good = scheduler.state_dict()
    with pytest.raises(ValueError, match="last_step|step"):
        scheduler.load_state_dict({**good, "last_step": -1})
    with pytest.raises(ValueError, match="stop_p"):
        scheduler.load_state_dict({**good, "stop_p": 3.0})
    with pytest.raises(KeyError, match="total_steps"):
        scheduler.load_state_dict({k: v for k, v in good.items() if k != "total_steps"})
    assert scheduler.state_dict() == good  # a refused state changed nothing


def test_scheduled_p_changes_what_the_modules_drop():
    model = nn.Sequential(DropBlock2d(0.0, 3))
    scheduler = LinearScheduler(model, stop_p=0.5, total_steps=2)
    x = torch.ones(4, 4, 32, 32)
    assert model(x) is x  # p == 0: the identity
    scheduler.step()
    quarter = (model(x) == 0).float().mean().item()
    scheduler.step()
    half = (model(x) == 0).float().mean().item()
    assert 0.0 < quarter < half


def test_compiled_model_is_accepted():
    model = nn.Sequential(nn.Conv2d(2, 2, 1), DropBlock2d(0.1, 3))
    compiled = torch.compile(model, backend="eager")  # not run: only its modules are read
    scheduler = LinearScheduler(compiled, stop_p=0.2, total_steps=2)
    scheduler.step()
    assert model[1].p == 0.1
