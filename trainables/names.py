"""Names a trial setting chooses among, listed once: the driver's settings table (``trainables.config``, which
imports no numpy or torch) and the data path (``trainables.data``) both read them from here."""
from __future__ import annotations

#: Frame samplers inside a window (``sampler``): SSTS (papers 000 and 001), evenly spaced, or consecutive frames.
SAMPLERS: tuple[str, ...] = ("ssts", "uniform", "consecutive")

#: How a window's per-frame labels become its one target (``label_fusion``; paper 003).
FUSIONS: tuple[str, ...] = ("mean", "extremum", "median", "center", "last")

#: Self-supervised pretraining methods (``pretrain_method``) and the backbones each one pretrains (papers 000 and 002:
#: masked video autoencoding of a video transformer; paper 001: BYOL and DINO pretext tasks of the 3D-conv stem +
#: ResNet-18). Torch-free, so the driver's pre-flight refuses a method that does not fit before any trial starts.
PRETRAIN_METHODS: dict[str, tuple[str, ...]] = {
    "mae": ("video_vit", "video_vit_tiny", "tpsbt", "tpsbt_base", "tpsbt_tiny"),
    "byol": ("conv3d_resnet_gru", "conv3d_resnet_gru_tiny"),
    "dino": ("conv3d_resnet_gru", "conv3d_resnet_gru_tiny"),
}
