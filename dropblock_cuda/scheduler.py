"""LinearScheduler: ramps the drop probability of every DropBlock module of a model."""

import numbers
from typing import Any, Dict, List

from torch import nn

from .functional import _check_p
from .modules import _DropBlockNd


def _check_total_steps(total_steps) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
        raise TypeError(f"total_steps: expected an int, got {type(total_steps).__name__}")
    if total_steps < 1:
        raise ValueError(f"total_steps: expected an int >= 1, got {total_steps}")
    return int(total_steps)


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step: expected an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step}")
    return int(step)


class LinearScheduler:
    """Sets ``p`` of every DropBlock module of ``model`` linearly from ``start_p`` to ``stop_p``.

    The paper (Ghiasi et al., 2018, section 3) ramps the drop probability up from 0 during
    training. After ``k`` calls of :meth:`step` the modules hold
    ``start_p + (stop_p - start_p) * min(k, total_steps) / total_steps``: ``start_p`` from
    construction on, ``stop_p`` after ``total_steps`` calls, and ``stop_p`` for good after that.

    The modules (:class:`DropBlock1d`, :class:`DropBlock2d`, :class:`DropBlock3d` and their
    subclasses) are found once, at construction, as an optimizer finds its parameters; build the
    scheduler after :func:`convert_dropblock`. ``model`` may be a ``torch.compile``'d module:
    ``p`` is a plain attribute that compiled graphs read as a graph input, so a whole ramp costs
    at most two compilations.

    :meth:`state_dict` / :meth:`load_state_dict` save and restore the step count and the
    settings (a plain dict), so that a resumed run continues the ramp where it stopped.
    """

    def __init__(self, model: nn.Module, stop_p: float, total_steps: int, start_p: float = 0.0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.stop_p = _check_p(stop_p, "stop_p")
        self.start_p = _check_p(start_p, "start_p")
        self.total_steps = _check_total_steps(total_steps)
        self.modules: List[_DropBlockNd] = [m for m in model.modules() if isinstance(m, _DropBlockNd)]
        if not self.modules:
            raise ValueError(
                "model: has no DropBlock module (dropblock_cuda.DropBlock1d/2d/3d) to schedule; "
                "convert torchvision's or timm's with dropblock_cuda.convert_dropblock first"
            )
        self.last_step = 0
        self._apply()

    @property
    def p(self) -> float:
        """The drop probability the modules hold now."""
        if self.last_step >= self.total_steps:
            return self.stop_p
        return self.start_p + (self.stop_p - self.start_p) * (self.last_step / self.total_steps)

    def _apply(self) -> None:
        p = self.p
        for module in self.modules:
            module.p = p

    def step(self) -> float:
        """Advances the ramp by one step, sets the modules' ``p`` and returns it."""
        self.last_step += 1
        self._apply()
        return self.p

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_step": self.last_step,
            "start_p": self.start_p,
            "stop_p": self.stop_p,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` and sets the modules' ``p`` to the restored step's value."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = {"last_step", "start_p", "stop_p", "total_steps"} - state_dict.keys()
        if missing:
            raise KeyError(f"state_dict: missing {sorted(missing)}")
        start_p = _check_p(state_dict["start_p"], "start_p")
        stop_p = _check_p(state_dict["stop_p"], "stop_p")
        total_steps = _check_total_steps(state_dict["total_steps"])
        last_step = _check_step(state_dict["last_step"])
        self.start_p, self.stop_p, self.total_steps, self.last_step = start_p, stop_p, total_steps, last_step
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(start_p={self.start_p}, stop_p={self.stop_p}, "
            f"total_steps={self.total_steps}, last_step={self.last_step}, p={self.p}, "
            f"modules={len(self.modules)})"
        )
