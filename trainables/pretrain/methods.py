"""Pretraining methods chosen by name: the :class:`Pretrainer` interface the pretraining trial drives, and the registry
that builds one for a backbone.

A method wraps the fine-tuning model the trial would build (``trainables.loop.build_model``: the backbone with its
heads) and trains its encoder part with a self-supervised loss. Whatever the method adds (a decoder, projection heads,
an EMA target) lives in the pretrainer and never reaches the exported encoder, which is written in the key layout the
backbone's own checkpoint loader reads, so fine-tuning loads it like any checkpoint of that family.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from trainables.names import PRETRAIN_METHODS
from trainables.registry import Registry


class Pretrainer(nn.Module):
    """One pretraining method around one model.

    Clips everywhere are (B, T, C, H, W) floats in [-1, 1] (``trainables.data.clips.normalise``), not augmented by the
    caller: masks, views and crops are the method's own, drawn from the ``generator`` it is given, so a step is
    reproducible.
    """

    def forward(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The loss of one batch: ``{"loss": scalar with grad, <name>: detached scalars to log}``."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts from 1 to ``total_steps``): EMA targets move here."""

    def forget_pending(self) -> None:
        """Drop what training forwards since the last step left for ``after_step``: a step that ran out of memory
        is taken again in micro-batches (``trainables.pretrain.run``)."""

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """The encoder's features for the frozen probe (no masking, no augmentation): (B, t, s, F) per time step and
        spatial position, or (B, t, F) for an encoder that pools each frame itself (the probe pools space with a
        learned attention)."""
        raise NotImplementedError

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights in the key layout the backbone's checkpoint loader reads (heads, decoders and
        targets left out), on the CPU."""
        raise NotImplementedError

    def reconstruct(self, clips: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction), both shaped like ``clips`` in [-1, 1]: for the report's picture of a
        masked method; other methods have nothing to show."""
        raise NotImplementedError(f"{type(self).__name__} reconstructs nothing")


_METHODS: Registry[Callable[[nn.Module, Any], Pretrainer]] = Registry("pretraining method")


def register_method(name: str) -> Callable:
    """Register a builder ``fn(model, config) -> Pretrainer`` under ``name`` (one of ``PRETRAIN_METHODS``); ``config``
    is the trial's ``TrialConfig`` (the method reads its knobs as attributes)."""
    if name not in PRETRAIN_METHODS:
        raise ValueError(f"pretraining method {name!r} is not listed in trainables.names.PRETRAIN_METHODS")
    return _METHODS.register(name)


def create_pretrainer(method: str, model: nn.Module, config: Any) -> Pretrainer:
    """Build ``method`` around ``model`` with the knobs of ``config``.

    Raises:
        ValueError: an unknown method (the message lists the valid ones).
    """
    import importlib

    # A method registers itself when its module is imported: only the chosen one's is.
    if method in _MODULES:
        importlib.import_module(_MODULES[method])
    return _METHODS.get(method)(model, config)


#: Where each method is implemented.
_MODULES = {"mae": "trainables.pretrain.mae", "byol": "trainables.pretrain.ssl", "dino": "trainables.pretrain.ssl"}
