"""Replacing a model's modules in place, wherever they sit (attributes, or lists of modules such as the layers)."""

from __future__ import annotations

from collections.abc import Callable

from mlx import nn


def replace_modules(model: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> int:
    """Put `swap(child)` in place of every child for which it returns a module; returns how many were replaced."""
    replaced = 0
    for _, module in model.named_modules():
        for name, child in list(module.children().items()):
            if isinstance(child, list):
                stored = module[name]  # children() hands out a copy of the list
                for i, item in enumerate(stored):
                    if (new := swap(item)) is not None:
                        stored[i] = new
                        replaced += 1
            elif (new := swap(child)) is not None:
                setattr(module, name, new)
                replaced += 1
    return replaced
