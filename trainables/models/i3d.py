"""Inflated 3D CNN backbone (paper 003): a timm 2D CNN inflated to 3D, global pooling, a small regression head.

``i3d`` inflates ``cnn`` (default ``resnet18``; the paper uses VGG-11-BN, VGG-16, VGG-16-BN and ResNet-50) with the
settings of :func:`trainables.models.inflate.inflate` — ``mode`` (centered | copied), ``surround`` (zero | random),
``masking``, ``dilation`` (e.g. ``[1, 2, 4, 8]``), ``time_kernel``. Only the CNN's conv trunk (timm
``forward_features``) is used; VGG's fc6/fc7 are replaced by the head, as in the paper's Figure 8 (conv layers, then FC
layers regressing valence and arousal).

The paper's *target multiplier* (x1 or x100: labels scaled up for training so their range suits the weight scale,
predictions scaled back) is a trial setting applied by the training loop — it multiplies the labels before the loss and
divides the model's predictions before metrics — not part of the model.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
import torch.nn as nn

from trainables.models.inflate import RANDOM_SURROUND_STD, Mode, Surround, TimePadding, inflate
from trainables.models.pretrained import LoadReport, checkpoint_path, load_best_fit
from trainables.models.registry import register_backbone

__all__ = ["I3D"]


class I3D(nn.Module):
    """Inflated timm CNN -> per-frame spatial pooling -> shared head.

    Input ``(B, T, C, H, W)`` is permuted to ``(B, C, T, H, W)``. Inflation never strides in time, so the trunk output
    keeps T frames: ``(B, C', T, h, w)``.

    * ``"frames"`` (B, T, D): each frame's trunk features averaged over space, through the head.
    * ``"window"`` (B, D): the trunk features averaged over T, h and w (the i3D global pool), through the same head.
    * with ``n_bins > 0`` also ``"logits"`` (B, D, n_bins) for the window and ``"frame_logits"`` (B, T, D, n_bins).

    Args:
        cnn: timm model name (ResNets, VGG / VGG-BN, ``test_resnet`` ...), built with random weights.
        out_dims: target dimensions (valence, arousal, ...).
        in_chans: input channels (3 RGB, 1 grayscale).
        pretrained: checkpoint file. A 2D checkpoint of ``cnn`` (4D conv kernels) is loaded into the 2D network before
            inflation — the paper's route from ImageNet / face-pretrained CNNs; a checkpoint of this 3D model is loaded
            after. Whichever interpretation matches more tensors wins; report: ``self.load_reports["pretrained"]``.
        time_kernel, mode, surround, surround_std, dilation, masking, time_padding: see :func:`inflate`.
        head_hidden: width of the hidden FC layer of the head (the paper's two FC layers); 0 = a single linear layer.
        dropout: before each head layer.
        n_bins: classification bins per dimension (0 = no logits).
        cnn_kwargs: extra keyword arguments for ``timm.create_model``.
    """

    def __init__(self, cnn: str = "resnet18", out_dims: int = 2, in_chans: int = 3,
                 pretrained: str | os.PathLike[str] | None = None, time_kernel: int = 3, mode: Mode = "centered",
                 surround: Surround = "zero", surround_std: float = RANDOM_SURROUND_STD,
                 dilation: Sequence[int] | None = None, masking: bool = False, time_padding: TimePadding = "zeros",
                 head_hidden: int = 256, dropout: float = 0.0, n_bins: int = 0, cnn_kwargs: dict | None = None):
        super().__init__()
        self.out_dims = out_dims
        self.n_bins = n_bins
        self.inflation = dict(time_kernel=time_kernel, mode=mode, surround=surround, surround_std=surround_std,
                              dilation=dilation, masking=masking, time_padding=time_padding)
        self.load_reports: dict[str, LoadReport] = {}
        cnn2d = timm.create_model(cnn, pretrained=False, num_classes=0, in_chans=in_chans, **(cnn_kwargs or {}))
        if hasattr(cnn2d, "pre_logits"):
            # VGG's fc6/fc7 sit outside forward_features; dropping them keeps every parameter on the gradient path.
            cnn2d.pre_logits = nn.Identity()
        self.encoder = inflate(cnn2d, **self.inflation)
        width = int(cnn2d.num_features)

        self.neck: nn.Module
        if head_hidden > 0:
            self.neck = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, head_hidden), nn.ReLU(inplace=True),
                                      nn.Dropout(dropout))
            neck_width = head_hidden
        else:
            self.neck = nn.Dropout(dropout)
            neck_width = width
        self.head = nn.Linear(neck_width, out_dims)
        self.bins = nn.Linear(neck_width, out_dims * n_bins) if n_bins > 0 else None

        path = checkpoint_path(pretrained)
        if path is not None:
            self._load_pretrained(path, cnn2d)

    def _load_pretrained(self, path: str, cnn2d: nn.Module) -> None:
        into_2d, report = load_best_fit(path, self, cnn2d, what="the 2D CNN (inflated)")
        if into_2d:
            # A 2D checkpoint, loaded where it fits: inflate again so the 3D kernels start from it. This is the
            # model's own adaptation of the keys the 3D match reports as shape-mismatched.
            self.encoder = inflate(cnn2d, **self.inflation)
        self.load_reports["pretrained"] = report

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"frames": (B, T, D), "window": (B, D)[, "logits", "frame_logits"]}."""
        if x.dim() != 5:
            raise ValueError(f"i3d expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        feats = self.encoder.forward_features(x.permute(0, 2, 1, 3, 4))  # (B, C', T, h, w)
        per_frame = feats.mean(dim=(3, 4)).transpose(1, 2)  # (B, T, C')
        # The mean over frames of the spatial means is the global (T, h, w) average pool.
        z_frames = self.neck(per_frame)
        z_window = self.neck(per_frame.mean(dim=1))
        out = {"frames": self.head(z_frames), "window": self.head(z_window)}
        if self.bins is not None:
            b, t = per_frame.shape[:2]
            out["logits"] = self.bins(z_window).view(b, self.out_dims, self.n_bins)
            out["frame_logits"] = self.bins(z_frames).view(b, t, self.out_dims, self.n_bins)
        return out


@register_backbone("i3d")
def i3d(**kwargs) -> I3D:
    return I3D(**kwargs)


@register_backbone("i3d_tiny", pins=("cnn",))
def i3d_tiny(**kwargs) -> I3D:
    """A variant that trains on CPU in seconds: timm's ``test_resnet`` (0.37M parameters) inflated, a 32-unit head."""
    kwargs.setdefault("cnn", "test_resnet")
    kwargs.setdefault("head_hidden", 32)
    return I3D(**kwargs)
