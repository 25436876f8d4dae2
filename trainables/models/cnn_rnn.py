"""2D-CNN-RNN (papers 003, 004): a timm 2D CNN embeds every frame, a GRU or LSTM runs over the frames, a small FC head
regresses the target dimensions per frame; the window output is the last frame's (the RNN has then seen the whole clip).
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from trainables.models.registry import register_backbone


class CnnRnn(nn.Module):
    """Per-frame timm CNN -> RNN -> FC head.

    Args:
        cnn: any timm model name (``resnet18``, ``vgg16_bn``, ``test_convnext`` ...), built without its classifier.
        rnn: ``gru`` or ``lstm``.
        hidden: RNN hidden size; layers: RNN layers; dropout: between RNN layers and before the head.
        out_dims: number of target dimensions (valence, arousal, ...).
        pretrained: True for timm's own weights (only where they are available offline), or the path of a local
            checkpoint file whose matching keys are loaded into the whole model (a key report is logged).
        n_bins: when > 0, also output per-dimension class logits over ``n_bins`` label bins ("logits" (B, D, n_bins)
            and "frame_logits" (B, T, D, n_bins)) for classification losses.
        in_chans: 3 for RGB, 1 for grayscale crops.
    """

    def __init__(self, cnn: str = "resnet18", rnn: str = "gru", hidden: int = 128, layers: int = 1,
                 dropout: float = 0.0, out_dims: int = 2, pretrained: bool | str | None = False, in_chans: int = 3,
                 n_bins: int = 0):
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        self.encoder = timm.create_model(cnn, pretrained=pretrained is True, num_classes=0, in_chans=in_chans)
        if hasattr(self.encoder, "pre_logits"):
            # timm's VGG keeps its fc6/fc7 block (as 7x7 convs, 100M+ weights) in pre_logits even without a classifier;
            # paper 003 feeds the conv blocks' features to the LSTM, so that block goes.
            self.encoder.pre_logits = nn.Identity()
        rnn_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(self.encoder.num_features, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dims))
        self.out_dims, self.n_bins = out_dims, n_bins
        # Per-dimension class logits for the CE / nCCE losses (paper 001), from the same recurrent state.
        self.cls_head = nn.Linear(hidden, out_dims * n_bins) if n_bins else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"frames": (B, T, D), "window": (B, D)}."""
        b, t = x.shape[:2]
        return self.decode_frames(self.encode_frames(x.flatten(0, 1)).view(b, t, -1))

    # The per-frame protocol (``encode_frames`` then ``decode_frames`` equals ``forward``): evaluation encodes each frame
    # of a video once and reuses its features in every window and view that contains it (trainables.data.clips).
    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) frames -> (N, F) CNN features."""
        return self.encoder(x)

    def decode_frames(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats: (B, T, F) per-frame features of B clips -> the outputs of ``forward``."""
        seq, _ = self.rnn(feats)
        return sequence_outputs(seq, self.head, self.cls_head, self.out_dims, self.n_bins)


def sequence_outputs(seq: torch.Tensor, head: nn.Module, cls_head: nn.Module | None, out_dims: int,
                     n_bins: int) -> dict[str, torch.Tensor]:
    """A recurrent model's outputs from its per-step states ``seq`` (B, T, H): "frames" (B, T, D) and "window" (the
    last step), and with a classification head ``cls_head`` "frame_logits" (B, T, D, n_bins) and "logits"."""
    frames = head(seq)
    out = {"frames": frames, "window": frames[:, -1]}
    if cls_head is not None:
        logits = cls_head(seq).view(*seq.shape[:2], out_dims, n_bins)
        out["frame_logits"], out["logits"] = logits, logits[:, -1]
    return out


def _build(**kwargs) -> CnnRnn:
    pretrained = kwargs.get("pretrained")
    model = CnnRnn(**kwargs)
    if isinstance(pretrained, str):
        from trainables.models.pretrained import load_checkpoint_into

        model.load_report = load_checkpoint_into(model, pretrained)
    return model


@register_backbone("cnn_rnn")
def cnn_rnn(**kwargs) -> CnnRnn:
    return _build(**kwargs)


@register_backbone("cnn_rnn_tiny", pins=("cnn",))
def cnn_rnn_tiny(**kwargs) -> CnnRnn:
    """A variant that trains on CPU in seconds: timm's tiny ``test_convnext`` per frame and a 64-unit GRU."""
    kwargs.setdefault("cnn", "test_convnext")
    kwargs.setdefault("hidden", 64)
    return _build(**kwargs)
