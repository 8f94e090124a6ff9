"""convert_dropblock: swaps torchvision's and timm's DropBlock modules for dropblock_cuda's."""

import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .modules import DropBlock2d, DropBlock3d


def _torchvision_classes():
    # A torchvision module can only exist once torchvision is imported: never import it here.
    if "torchvision" not in sys.modules:
        return None, None
    try:
        from torchvision.ops import DropBlock2d as TorchvisionDropBlock2d
        from torchvision.ops import DropBlock3d as TorchvisionDropBlock3d
    except ImportError:
        return None, None
    return TorchvisionDropBlock2d, TorchvisionDropBlock3d


def _timm_class():
    if "timm" not in sys.modules:
        return None
    try:
        from timm.layers import DropBlock2d as TimmDropBlock2d
    except ImportError:
        return None
    return TimmDropBlock2d


def _from_torchvision(module: nn.Module, cls) -> nn.Module:
    return cls(module.p, module.block_size, module.inplace, module.eps)


def _from_timm(module: nn.Module, name: str) -> nn.Module:
    where = f" (module {name!r})" if name else ""
    if getattr(module, "with_noise", False):
        raise ValueError(
            f"with_noise=True: timm's DropBlock2d fills the dropped blocks with noise; dropblock_cuda "
            f"has no equivalent{where}"
        )
    p = module.drop_prob if module.drop_prob else 0.0  # timm treats a falsy drop_prob as off
    try:
        return DropBlock2d(
            p,
            module.block_size,
            bool(module.inplace),
            shared_channels=bool(getattr(module, "couple_channels", True)),
            gamma_scale=getattr(module, "gamma_scale", 1.0),
            scale_by_keep=bool(getattr(module, "scale_by_keep", True)),
        )
    except (TypeError, ValueError) as error:  # settings our modules refuse (p * gamma_scale > 1, ...)
        raise type(error)(f"{error}{where}") from error


def _replacement(module: nn.Module, name: str, classes) -> Optional[nn.Module]:
    torchvision_2d, torchvision_3d, timm_2d = classes
    # Exact types: a subclass may override forward, and replacing it would change what it does.
    kind = type(module)
    if torchvision_2d is not None and kind is torchvision_2d:
        new = _from_torchvision(module, DropBlock2d)
    elif torchvision_3d is not None and kind is torchvision_3d:
        new = _from_torchvision(module, DropBlock3d)
    elif timm_2d is not None and kind is timm_2d:
        new = _from_timm(module, name)
    else:
        return None
    new.train(module.training)
    return new


def _plan(module: nn.Module, prefix: str, classes, done: Dict[int, nn.Module], swaps: List[Tuple]) -> None:
    """Collects (parent, name, replacement) for every child to swap, changing nothing yet."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if id(child) in done:  # a module used in several places keeps one (shared) replacement
            if done[id(child)] is not child:
                swaps.append((module, name, done[id(child)]))
            continue
        new = _replacement(child, path, classes)
        done[id(child)] = child if new is None else new
        if new is None:
            _plan(child, path, classes, done, swaps)
        else:
            swaps.append((module, name, new))


def convert_dropblock(model: nn.Module) -> nn.Module:
    """Replaces, in place and recursively, torchvision's and timm's DropBlock modules with ours.

    ``torchvision.ops.DropBlock2d`` / ``DropBlock3d`` become :class:`DropBlock2d` /
    :class:`DropBlock3d` with the same ``p``, ``block_size``, ``inplace`` and ``eps``;
    ``timm.layers.DropBlock2d`` becomes :class:`DropBlock2d` with ``p=drop_prob``, the same
    ``block_size``, ``inplace``, ``gamma_scale`` and ``scale_by_keep``,
    ``shared_channels=couple_channels`` and the default ``eps`` (timm's ``drop_block_rate``
    models, e.g. ``timm.create_model("resnet50", drop_block_rate=0.1)``, convert as they are).
    The training mode is kept; a module shared by several parents gets one shared replacement.
    timm's ``with_noise=True`` has no equivalent and raises ValueError rather than change what the
    model computes; subclasses of those classes are left alone; a TorchScript module raises
    TypeError (convert before scripting). Neither torchvision nor timm is needed (or
    imported) to call this. When an option is refused, the model is left unchanged.

    Returns ``model``, or its replacement when ``model`` itself is such a module.

    The masks are drawn with this package's law (blocks inside the map, any block size; see
    the README), not bit-identical to torchvision's or timm's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        # A scripted or traced model's submodules are compiled code: nothing can be swapped in.
        raise TypeError(
            "model: a TorchScript module (torch.jit.script or torch.jit.trace) cannot be converted; "
            "convert the eager model first, then script it (dropblock_cuda's modules are scriptable)"
        )
    classes = (*_torchvision_classes(), _timm_class())
    new = _replacement(model, "", classes)
    if new is not None:
        return new
    swaps: List[Tuple] = []
    _plan(model, "", classes, {}, swaps)  # raises, if it does, before the model is touched
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return model
