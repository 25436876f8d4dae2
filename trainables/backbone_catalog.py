"""The shipped backbones and the trial settings each one's constructor takes, known without importing the models.

The sweep's driver checks every configuration before Ray starts (``cluster.preflight``): that a ``backbone`` is
registered and which model settings apply to it. Asking the registry itself (``trainables.models``) imports torch, timm
and torchvision, about 3 s of the driver's start-up that no training needs. This table answers instead; a test checks it
against the registry (``tests/test_driver_start.py``), so a new backbone or a changed constructor fails there until
the table is updated. Once the registry is loaded in this process (a trial, a test that registers its own backbone), it
is the one asked.

This is also the one place the project names its backbones outside the models themselves (where each constructor
registers under its name): the settings table takes its default and the backbones that accept ``layer_decay`` from
here.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

from trainables.names import PRETRAIN_METHODS


class Shipped(NamedTuple):
    """What the driver knows of a shipped backbone without building it."""

    #: The constructor arguments a trial config may set (``trainables.models.backbone_arguments``).
    arguments: frozenset[str]
    #: Whether its parameters have a layer-decay depth (``layer_id``): the video transformers (papers 000, 002).
    layer_decay: bool = False
    #: Its shape family (``trainables.shapes.FAMILIES``) and the constructor
    #: defaults and pins that enter that family's rule. A test checks them against the built model.
    shape: tuple[str, dict] = ("any", {})
    #: The self-supervised methods that pretrain it (``emotune pretrain``; ``trainables.names.PRETRAIN_METHODS``).
    pretrain: tuple[str, ...] = ()


#: name -> what a trial may set, whether ``layer_decay`` applies (a test checks both against the registry) and its
#: shape rule (checked against a real forward pass by tests/test_shapes.py).
SHIPPED: dict[str, Shipped] = {
    "cnn_rnn": Shipped(frozenset({"cnn", "dropout", "hidden", "layers", "pretrained", "rnn"}),
        shape=("cnn", {"cnn": "resnet18"})),
    "cnn_rnn_tiny": Shipped(frozenset({"dropout", "hidden", "layers", "pretrained", "rnn"}),
        shape=("cnn", {"cnn": "test_convnext"})),
    "conv3d_resnet_gru": Shipped(frozenset({
        "bidirectional", "blocks", "dropout", "freeze", "hidden", "layers", "pretext_checkpoint", "pretrained",
        "stem_channels", "widths"}), pretrain=("byol", "dino")),
    "conv3d_resnet_gru_tiny": Shipped(frozenset({
        "bidirectional", "dropout", "freeze", "hidden", "layers", "pretext_checkpoint", "pretrained"}),
        pretrain=("byol", "dino")),
    "i3d": Shipped(frozenset({
        "cnn", "cnn_kwargs", "dilation", "dropout", "head_hidden", "masking", "mode", "pretrained", "surround",
        "surround_std", "time_kernel", "time_padding"}),
        shape=("inflated_cnn", {"cnn": "resnet18"})),
    "i3d_tiny": Shipped(frozenset({
        "cnn_kwargs", "dilation", "dropout", "head_hidden", "masking", "mode", "pretrained", "surround",
        "surround_std", "time_kernel", "time_padding"}),
        shape=("inflated_cnn", {"cnn": "test_resnet"})),
    "mimamo": Shipped(frozenset({
        "bidirectional", "cnn", "dropout", "feature_dim", "hidden", "layers", "phase_size", "pretrained",
        "pyramid_extension", "pyramid_levels", "pyramid_orientations", "temporal_channels"}),
        shape=("cnn_pyramid", {"cnn": "resnet50", "pyramid_levels": 2, "phase_size": None})),
    "mimamo_tiny": Shipped(frozenset({
        "bidirectional", "dropout", "feature_dim", "hidden", "layers", "phase_size", "pretrained", "pyramid_extension",
        "pyramid_levels", "pyramid_orientations", "temporal_channels"}),
        shape=("cnn_pyramid", {"cnn": "test_resnet", "pyramid_levels": 2, "phase_size": None})),
    "tpsbt": Shipped(frozenset({
        "bottleneck_tokens", "checkpoint", "depths", "drop_path", "embed_dim", "img_size", "mlp_ratio", "num_frames",
        "num_heads", "patch_size", "tubelet_size"}), layer_decay=True,
        shape=("pooled_patches", {"patch_size": 16, "tubelet_size": 2, "stages": 3}), pretrain=("mae",)),
    "tpsbt_base": Shipped(frozenset({
        "bottleneck_tokens", "checkpoint", "drop_path", "img_size", "num_frames", "patch_size", "tubelet_size"}),
        layer_decay=True,
        shape=("pooled_patches", {"patch_size": 16, "tubelet_size": 2, "stages": 3}), pretrain=("mae",)),
    "tpsbt_tiny": Shipped(frozenset({
        "bottleneck_tokens", "checkpoint", "drop_path", "img_size", "mlp_ratio", "num_frames", "patch_size",
        "tubelet_size"}), layer_decay=True,
        shape=("pooled_patches", {"patch_size": 8, "tubelet_size": 2, "stages": 3}), pretrain=("mae",)),
    "video_vit": Shipped(frozenset({
        "checkpoint", "depth", "drop", "drop_path", "embed_dim", "img_size", "mlp_ratio", "num_frames", "num_heads",
        "patch_size", "tubelet_size"}), layer_decay=True,
        shape=("patches", {"patch_size": 16, "tubelet_size": 2}), pretrain=("mae",)),
    "video_vit_tiny": Shipped(frozenset({
        "checkpoint", "drop", "drop_path", "mlp_ratio", "num_frames", "tubelet_size"}), layer_decay=True,
        shape=("patches", {"patch_size": 8, "tubelet_size": 2}), pretrain=("mae",)),
}

#: The backbone a trial builds when its config names none: the tiny CNN-RNN, which trains on CPU in seconds.
DEFAULT_BACKBONE = "cnn_rnn_tiny"
#: Backbones each pretraining method pretrains.
PRETRAINED_BY: dict[str, tuple[str, ...]] = {
    method: tuple(name for name, item in SHIPPED.items() if method in item.pretrain) for method in PRETRAIN_METHODS}
#: Backbones that accept the ``layer_decay`` setting.
LAYER_DECAY_BACKBONES: tuple[str, ...] = tuple(name for name, item in SHIPPED.items() if item.layer_decay)


def _registry():
    """The live registry module when the models are already imported here, else None."""
    return sys.modules.get("trainables.models.registry") if "trainables.models" in sys.modules else None


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    registry = _registry()
    return registry.list_backbones() if registry is not None else sorted(SHIPPED)


def backbone_arguments(name: str) -> frozenset[str]:
    """The constructor arguments of backbone ``name`` that a trial config may set.

    Raises:
        ValueError: ``name`` is not registered.
    """
    registry = _registry()
    if registry is not None:
        return registry.backbone_arguments(name)
    if name not in SHIPPED:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(sorted(SHIPPED))}")
    return SHIPPED[name].arguments
