"""Backbone registry: a decorator to register a constructor and ``create_backbone(name, **kwargs)``.

Every backbone returns a dict with ``"window"`` (B, D) and, when the architecture has a time axis, ``"frames"``
(B, T, D), so the trial loop never needs to know which family it trains.
"""
from __future__ import annotations

import inspect
import typing
from typing import Callable

import torch.nn as nn

from trainables.registry import Registry

_BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


# Set by the training loop from the data and the loss, never by a trial setting.
LOOP_ARGUMENTS = frozenset({"out_dims", "in_chans", "n_bins"})


def register_backbone(name: str, pins: tuple[str, ...] = ()) -> Callable[[Callable[..., nn.Module]],
                                                                          Callable[..., nn.Module]]:
    """Register ``fn`` under ``name``; a second registration of the same name is an error.

    ``fn``'s return annotation is the model class: its constructor's arguments are what a trial config may set
    (:func:`backbone_arguments`), less ``pins``, the arguments this variant fixes (a tiny variant's CNN).
    """
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fn.pinned_arguments = frozenset(pins)
        return _BACKBONES.add(name, fn)

    return add


def backbone_arguments(name: str) -> frozenset[str]:
    """Constructor arguments of backbone ``name`` that a trial config may set.

    Raises:
        ValueError: ``name`` is not registered.
    """
    fn = _BACKBONES.get(name)
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        params = inspect.signature(typing.get_type_hints(fn)["return"]).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return frozenset(names - LOOP_ARGUMENTS - fn.pinned_arguments)


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return _BACKBONES.names()


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    return _BACKBONES.get(name)(**kwargs)
