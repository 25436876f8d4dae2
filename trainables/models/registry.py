"""Backbone registry: a decorator to register a constructor and ``create_backbone(name, **kwargs)``.

Every backbone returns a dict with ``"window"`` (B, D) and, when the architecture has a time axis, ``"frames"``
(B, T, D), so the trial loop never needs to know which family it trains.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from trainables.registry import Registry

_BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under ``name``; a second registration of the same name is an error."""
    return _BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return _BACKBONES.names()


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    return _BACKBONES.get(name)(**kwargs)
