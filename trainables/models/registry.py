"""Backbone registry: a decorator to register a constructor and ``create_backbone(name, **kwargs)``.

Every backbone returns a dict with ``"window"`` (B, D) and, when the architecture has a time axis, ``"frames"``
(B, T, D), so the trial loop never needs to know which family it trains.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under ``name``; a second registration of the same name is an error."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return decorator


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        fn = _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}") from None
    return fn(**kwargs)
