"""MIMAMO Net (paper 004; Deng et al., AAAI 2020): micro- and macro-motion, two streams per frame, a GRU over frames.

* Spatial stream (macro): a timm 2D CNN (ResNet-50 in the paper) embeds every RGB frame; a linear layer + ReLU
  projects its pooled features to ``feature_dim``.
* Temporal stream (micro): the frames are converted to luma, optionally resized to ``phase_size`` x ``phase_size``
  (the authors use 48x48 phase crops), mirror-extended to twice the size (``pyramid_extension``, as the authors),
  decomposed by a complex steerable pyramid (``pyramid_levels`` band-pass levels x ``pyramid_orientations``
  orientations, :mod:`trainables.models.steerable_pyramid`), cropped back to the frame's quadrant and turned into the
  phase difference between each frame and the previous one, unwrapped as the authors' ``torch_unwrap`` does (zero for
  the first frame of a clip). As in the authors' code, each band's spatial mean is then removed (a global shift of the
  whole face moves every pixel's phase alike) and the result clamped to [-5*pi, 5*pi]. A small CNN
  takes the finest level at its input and concatenates each coarser level where its resolution matches (after every
  stride-2 block), as the authors' PhaseNet does with their two levels; ``pyramid_levels + 1`` blocks of two 3x3
  convs (the second with stride 2) with ``temporal_channels * 2**i`` channels, global average pooling, a linear layer
  + ReLU to ``feature_dim``.
* The two ``feature_dim`` vectors are concatenated per frame -> GRU (``hidden``, ``layers``, dropout between
  layers, optionally bidirectional as in the authors' 2-layer bi-GRU) -> per-frame FC head -> "frames" (B, T, D);
  "window" is the last frame's output (as in the CNN-RNN: a forward GRU has then seen the whole clip).

Causality: with ``bidirectional=False`` frame t's output depends on frames 0..t only (its phase difference uses
frames t-1 and t). The phase differences are computed without gradient (they are a fixed transform of the input);
gradients reach both streams' parameters.

Per-frame protocol: not offered. ``encode_frames`` of single frames cannot see the previous frame, and with SSTS
sampling the "previous frame" of a clip position depends on the view, so the model has no ``encode_frames`` /
``decode_frames`` and evaluation runs every clip through ``forward``.

Deviations from the authors' code, for per-frame outputs on any clip: one phase difference per frame instead of 12
per GRU step, and no amplitude-weighted blur of the unwrapped phases; BatchNorm only in the CNNs (not in the FC
layers); the spatial CNN is trained end to end (the authors used fixed pre-extracted ResNet-50 FER+ features).
``pyramid_extension=False`` is a further deviation (the pyramid of the frame as it is: its borders wrap around).
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.cnn_rnn import sequence_outputs
from trainables.models.registry import register_backbone
from trainables.models.steerable_pyramid import ComplexSteerablePyramid, phase_difference, to_grayscale

__all__ = ["Mimamo", "PhaseNet"]


#: The authors' bound on the mean-free phase differences.
_CLAMP = 5 * math.pi


def _block(in_c: int, out_c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, 3, padding=1, bias=False), nn.BatchNorm2d(out_c), nn.ReLU(inplace=True),
        nn.Conv2d(out_c, out_c, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(out_c), nn.ReLU(inplace=True))


class PhaseNet(nn.Module):
    """The temporal stream's CNN over the per-level phase-difference images of one frame.

    Args:
        levels: pyramid levels given to ``forward`` (finest first); orientations: channels per level.
        channels: width of the first block; block i has ``channels * 2**i``.
        out_features: size of the output vector.
    """

    def __init__(self, levels: int, orientations: int, channels: int, out_features: int):
        super().__init__()
        self.levels = levels
        blocks, in_c = [], orientations
        for i in range(levels + 1):
            out_c = channels * 2 ** i
            blocks.append(_block(in_c, out_c))
            in_c = out_c + (orientations if i + 1 < levels else 0)
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Sequential(nn.Linear(in_c, out_features), nn.ReLU(inplace=True))

    def forward(self, bands: list[torch.Tensor]) -> torch.Tensor:
        """bands: ``levels`` tensors (N, orientations, h_l, w_l) -> (N, out_features)."""
        x = bands[0]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 < self.levels:
                level = bands[i + 1]
                if level.shape[-2:] != x.shape[-2:]:  # odd sizes round differently in the pyramid and the conv
                    level = F.interpolate(level, size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, level], dim=1)
        return self.fc(x.mean(dim=(-2, -1)))


class Mimamo(nn.Module):
    """MIMAMO Net: spatial CNN + phase-difference CNN per frame -> GRU -> per-frame FC head (module docstring).

    Args:
        cnn: timm model name of the spatial stream (``resnet50`` in the paper), built without classifier.
        pyramid_levels: band-pass levels of the steerable pyramid (paper code: 2).
        pyramid_orientations: orientations per level (paper code: 2; 4 is the usual pyramid default).
        pyramid_extension: mirror the phase frames to 2H x 2W before the pyramid and crop every level back, as the
            authors' code does (default). False deviates from them: 4x smaller FFTs, but bands near a border see the
            opposite border (on a 48x48 moving texture with 2 levels x 2 orientations the phase inputs then differ
            from the authors' by a median of ~0.05 rad, a quarter of the well-conditioned bins by more than 0.1 rad,
            single bins by up to 2*pi where the unwrap takes the other branch).
        phase_size: side the grayscale frames are resized to before the pyramid (paper code: 48); None keeps the
            frame size. Must leave the coarsest level at least 2x2.
        temporal_channels: first-block width of the temporal CNN (paper code: 64).
        feature_dim: per-stream feature size before concatenation (paper code: 256).
        hidden: GRU hidden size per direction; layers: stacked GRU layers; bidirectional: a bi-GRU (paper
            code: 2 layers of 128, bidirectional) — then per-frame outputs are no longer causal.
        dropout: on the stream features, between GRU layers (when stacked) and before the head.
        pretrained: False / None; True for timm's own spatial weights (only where available offline); or the path of
            a local checkpoint: loaded into the whole model, or, when its keys fit the spatial CNN better (a plain
            ResNet-50 checkpoint), into the spatial CNN (``load_report`` says which and what).
        out_dims: target dimensions; in_chans: 3 (RGB) or 1 (grayscale) input channels.
        n_bins: when > 0, also "logits" (B, D, n_bins) and "frame_logits" (B, T, D, n_bins), as in the CNN-RNN.
    """

    def __init__(self, cnn: str = "resnet50", pyramid_levels: int = 2, pyramid_orientations: int = 2,
                 pyramid_extension: bool = True, phase_size: int | None = None, temporal_channels: int = 64,
                 feature_dim: int = 256,
                 hidden: int = 128, layers: int = 2, bidirectional: bool = False, dropout: float = 0.3,
                 pretrained: bool | str | None = False, out_dims: int = 2, in_chans: int = 3, n_bins: int = 0):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.spatial = timm.create_model(cnn, pretrained=pretrained is True, num_classes=0, in_chans=in_chans)
        self.spatial_fc = nn.Sequential(nn.Linear(self.spatial.num_features, feature_dim), nn.ReLU(inplace=True))
        self.pyramid = ComplexSteerablePyramid(pyramid_levels, pyramid_orientations,
                                               symmetric_extension=pyramid_extension)
        self.phase_size = phase_size
        self.temporal = PhaseNet(pyramid_levels, pyramid_orientations, temporal_channels, feature_dim)
        self.feature_dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(2 * feature_dim, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)
        rnn_out = hidden * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(rnn_out, rnn_out), nn.ReLU(),
                                  nn.Linear(rnn_out, out_dims))
        self.out_dims, self.n_bins = out_dims, n_bins
        self.cls_head = nn.Linear(rnn_out, out_dims * n_bins) if n_bins else None

    @torch.no_grad()
    def phase_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, T, C, H, W) -> per level (B*T, orientations, h_l, w_l) phase differences (unwrapped as the authors
        unwrap them, :func:`~trainables.models.steerable_pyramid.phase_difference`), each band's spatial mean removed,
        clamped to [-5*pi, 5*pi] as the authors' code does after the mean. Without their amplitude-weighted blur the
        differences lie in [-2*pi, pi] and the mean-free ones in [-3*pi, 3*pi], so the clamp does not bind here; it is
        kept so the steps are theirs."""
        b, t = x.shape[:2]
        gray = to_grayscale(x.float())
        if self.phase_size is not None and tuple(gray.shape[-2:]) != (self.phase_size, self.phase_size):
            gray = F.interpolate(gray.flatten(0, 1), size=(self.phase_size, self.phase_size), mode="bilinear",
                                 align_corners=False, antialias=True).view(b, t, 1, self.phase_size, self.phase_size)
        bands = phase_difference(self.pyramid, gray)
        return [(d - d.mean(dim=(-2, -1), keepdim=True)).clamp(-_CLAMP, _CLAMP).flatten(0, 1).to(x.dtype)
                for d in bands]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"frames": (B, T, D), "window": (B, D)} (+ logits when ``n_bins``)."""
        b, t = x.shape[:2]
        spatial = self.spatial_fc(self.spatial(x.flatten(0, 1)))
        temporal = self.temporal(self.phase_inputs(x))
        feats = self.feature_dropout(torch.cat([spatial, temporal], dim=1)).view(b, t, -1)
        seq, _ = self.rnn(feats)
        return sequence_outputs(seq, self.head, self.cls_head, self.out_dims, self.n_bins)


def _build(**kwargs) -> Mimamo:
    model = Mimamo(**kwargs)
    path = kwargs.get("pretrained")
    if isinstance(path, str) and path:
        from trainables.models.pretrained import load_best_fit

        # A checkpoint of the whole MIMAMO model fits the model; a plain ResNet-50 (ImageNet / FER+) fits the spatial
        # CNN's own keys only.
        model.load_report = load_best_fit(path, model, model.spatial, what="the spatial CNN")[1]
    return model


@register_backbone("mimamo")
def mimamo(**kwargs) -> Mimamo:
    return _build(**kwargs)


@register_backbone("mimamo_tiny", pins=("cnn",))
def mimamo_tiny(**kwargs) -> Mimamo:
    """A variant that trains on CPU in well under a second per small batch: timm's ``test_resnet``, a narrow temporal
    CNN and one 32-unit GRU layer."""
    kwargs.setdefault("cnn", "test_resnet")
    kwargs.setdefault("temporal_channels", 8)
    kwargs.setdefault("feature_dim", 32)
    kwargs.setdefault("hidden", 32)
    kwargs.setdefault("layers", 1)
    return _build(**kwargs)
