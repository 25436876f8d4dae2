"""3D-conv stem -> per-frame ResNet-18 -> GRU backbone (paper 001, SS-VAERR downstream model).

Grayscale face clips (96x96 in the paper) go through one 3D convolution (5x7x7, the lip-reading "front-end" of
LiRA-style pretext models: it sees 5 neighbouring frames, so short-range motion is encoded before any per-frame
processing), then a ResNet-18 trunk applied to every frame, a global average pool per frame, a GRU over the frames and a
per-frame linear regression. Stem and trunk form ``self.encoder`` — exactly the part the paper transfers from a pretext
checkpoint (``pretext_checkpoint``) and optionally freezes (``freeze``).

Outputs: ``"frames"`` (B, T, D) — the per-frame regression; ``"window"`` (B, D) — the mean over frames of the per-frame
predictions, i.e. what a window label fused with the ``mean`` rule should match (the model makes no separate clip-level
prediction). With ``n_bins > 0`` also ``"frame_logits"`` (B, T, D, n_bins), the per-frame class logits of the CE / nCCE
losses, and ``"logits"`` (B, D, n_bins), their mean over frames.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from trainables.models.pretrained import LoadReport, checkpoint_path, load_checkpoint_into
from trainables.models.registry import register_backbone

__all__ = ["BasicBlock", "Conv3dResNetEncoder", "Conv3dResNetGRU", "FREEZE_POLICIES", "FrameResNet"]

Freeze = Literal["none", "first_layer", "stem_trunk"]
FREEZE_POLICIES: tuple[str, ...] = ("none", "first_layer", "stem_trunk")
# ITU-R BT.601 luma weights: how an RGB clip is turned into the grayscale the paper trains on.
_LUMA = (0.299, 0.587, 0.114)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1-projection shortcut); torchvision/timm parameter names, so
    ResNet-18 checkpoints from either map onto it by name."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class FrameResNet(nn.Module):
    """The four stages of a ResNet (``layer1`` .. ``layer4``) without its stem, then a global average pool.

    ``widths=(64, 128, 256, 512)`` and ``blocks=(2, 2, 2, 2)`` on a 64-channel input is ResNet-18's trunk.
    """

    def __init__(self, in_chs: int = 64, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"widths and blocks need one entry per stage (4), got {list(widths)} and {list(blocks)}")
        chs = in_chs
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(chs, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            chs = width
        self.num_features = chs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, num_features)."""
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


class Conv3dResNetEncoder(nn.Module):
    """``stem`` (Conv3d 5x7x7 stride (1,2,2) + BN + ReLU + MaxPool3d (1,3,3)/(1,2,2)) then ``trunk`` per frame."""

    def __init__(self, in_chans: int = 1, stem_channels: int = 64, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv3d(in_chans, stem_channels, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            bn=nn.BatchNorm3d(stem_channels),
            act=nn.ReLU(inplace=True),
            pool=nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        ))
        nn.init.kaiming_normal_(self.stem.conv.weight, mode="fan_out", nonlinearity="relu")
        self.trunk = FrameResNet(stem_channels, widths, blocks)
        self.num_features = self.trunk.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> per-frame features (B, T, num_features)."""
        y = self.stem(x)  # (B, C0, T, h, w): temporal stride 1 and padding 2 keep T
        b, c, t, h, w = y.shape
        y = y.transpose(1, 2).reshape(b * t, c, h, w)
        return self.trunk(y).view(b, t, -1)


class Conv3dResNetGRU(nn.Module):
    """SS-VAERR downstream network: encoder (3D stem + per-frame ResNet) -> GRU -> per-frame heads.

    Args:
        out_dims: target dimensions (valence, arousal, ...).
        in_chans: 1 (grayscale, the paper's input) or 3. A 1-channel model also accepts RGB clips and converts them to
            luma (0.299 R + 0.587 G + 0.114 B), so it can sit behind an RGB data pipeline.
        pretrained: checkpoint of this whole model (loaded last; report in ``load_reports["pretrained"]``).
        pretext_checkpoint: checkpoint of a pretext model whose stem + ResNet initialise ``self.encoder`` (wrapper keys
            ``model`` / ``state_dict`` / ``module`` and prefixes ``module.``, ``encoder.``, ``backbone.`` are handled;
            report in ``load_reports["pretext"]``, also logged).
        freeze: ``none``; ``first_layer`` — the 3D stem conv (the paper's "frozen" setting, which worked better than
            freezing more); ``stem_trunk`` — the whole encoder, whose BatchNorm layers then also stay in eval mode so
            their running statistics keep the pretext values.
        stem_channels, widths, blocks: encoder sizes (defaults: ResNet-18).
        hidden, layers, bidirectional, dropout: the GRU (the paper does not state them; a 2-layer bidirectional GRU
            of 256 units is the default) and dropout between its layers and before the heads.
        n_bins: classification bins per dimension for CE / nCCE losses (0 = no logits).
    """

    def __init__(self, out_dims: int = 2, in_chans: int = 1, pretrained: str | os.PathLike[str] | None = None,
                 pretext_checkpoint: str | os.PathLike[str] | None = None, freeze: Freeze = "none",
                 stem_channels: int = 64, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2), hidden: int = 256, layers: int = 2,
                 bidirectional: bool = True, dropout: float = 0.0, n_bins: int = 0):
        super().__init__()
        if freeze not in FREEZE_POLICIES:
            raise ValueError(f"freeze must be one of {', '.join(FREEZE_POLICIES)}, got {freeze!r}")
        self.in_chans = in_chans
        self.out_dims = out_dims
        self.n_bins = n_bins
        self.freeze = freeze
        self.load_reports: dict[str, LoadReport] = {}
        self.encoder = Conv3dResNetEncoder(in_chans, stem_channels, widths, blocks)
        self.gru = nn.GRU(self.encoder.num_features, hidden, num_layers=layers, batch_first=True,
                          bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        width = hidden * (2 if bidirectional else 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, out_dims)
        self.bins = nn.Linear(width, out_dims * n_bins) if n_bins > 0 else None

        pretext = checkpoint_path(pretext_checkpoint)
        if pretext is not None:
            self.load_reports["pretext"] = load_checkpoint_into(self.encoder, pretext)
        path = checkpoint_path(pretrained)
        if path is not None:
            self.load_reports["pretrained"] = load_checkpoint_into(self, path)
        self._apply_freeze()

    def frozen_modules(self) -> list[nn.Module]:
        """Modules whose parameters the freeze policy fixes."""
        if self.freeze == "first_layer":
            return [self.encoder.stem.conv]
        if self.freeze == "stem_trunk":
            return [self.encoder]
        return []

    def _apply_freeze(self) -> None:
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Conv3dResNetGRU":
        super().train(mode)
        if self.freeze == "stem_trunk":
            # A frozen encoder must compute what it computed when it was trained: running statistics, not batch ones.
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _to_model_channels(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[2]
        if c == self.in_chans:
            return x
        if self.in_chans == 1 and c == 3:
            luma = x.new_tensor(_LUMA).view(1, 1, 3, 1, 1)
            return (x * luma).sum(dim=2, keepdim=True)
        raise ValueError(f"conv3d_resnet_gru built for in_chans={self.in_chans} got clips with {c} channels")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"frames": (B, T, D), "window": (B, D)[, "frame_logits", "logits"]}."""
        if x.dim() != 5:
            raise ValueError(f"conv3d_resnet_gru expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        x = self._to_model_channels(x)
        feats = self.encoder(x.transpose(1, 2))  # (B, T, F)
        seq, _ = self.gru(feats)
        seq = self.drop(seq)
        frames = self.head(seq)
        out = {"frames": frames, "window": frames.mean(dim=1)}
        if self.bins is not None:
            b, t = frames.shape[:2]
            frame_logits = self.bins(seq).view(b, t, self.out_dims, self.n_bins)
            out["frame_logits"] = frame_logits
            out["logits"] = frame_logits.mean(dim=1)
        return out


@register_backbone("conv3d_resnet_gru")
def conv3d_resnet_gru(**kwargs) -> Conv3dResNetGRU:
    return Conv3dResNetGRU(**kwargs)


@register_backbone("conv3d_resnet_gru_tiny", pins=("stem_channels", "widths", "blocks"))
def conv3d_resnet_gru_tiny(**kwargs) -> Conv3dResNetGRU:
    """A variant that trains on CPU in seconds: 16-channel stem, one block per stage (16/24/32/48), a 32-unit GRU."""
    kwargs.setdefault("stem_channels", 16)
    kwargs.setdefault("widths", (16, 24, 32, 48))
    kwargs.setdefault("blocks", (1, 1, 1, 1))
    kwargs.setdefault("hidden", 32)
    kwargs.setdefault("layers", 1)
    return Conv3dResNetGRU(**kwargs)
