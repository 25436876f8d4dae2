"""Names a trial setting chooses among, listed once: the driver's settings table (``trainables.config``, which
imports no numpy or torch) and the data path (``trainables.data``) both read them from here."""
from __future__ import annotations

#: Frame samplers inside a window (``sampler``): SSTS (papers 000 and 001), evenly spaced, or consecutive frames.
SAMPLERS: tuple[str, ...] = ("ssts", "uniform", "consecutive")

#: How a window's per-frame labels become its one target (``label_fusion``; paper 003).
FUSIONS: tuple[str, ...] = ("mean", "extremum", "median", "center", "last")

#: Self-supervised pretraining methods (``pretrain_method``): masked video autoencoding of a video transformer
#: (papers 000 and 002), BYOL and DINO pretext tasks of the 3D-conv stem + ResNet-18 (paper 001). The backbones each one
#: pretrains are in the backbone catalog (``trainables.backbone_catalog.PRETRAINED_BY``).
PRETRAIN_METHODS: tuple[str, ...] = ("mae", "byol", "dino")
