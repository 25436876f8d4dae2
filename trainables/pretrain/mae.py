"""Masked video autoencoding (``mae``): VideoMAE's pretraining (paper 000) for :class:`~trainables.models.video_vit.
VideoViT` and SVFAP's (paper 002) for :class:`~trainables.models.tpsbt.TPSBT`.

A clip is cut into tubelet x p x p patches (one per encoder token); a tube mask (:func:`~trainables.pretrain.masking.
tube_mask`) hides ``mask_ratio`` of the spatial positions in every temporal slice; the encoder sees the visible tokens
only; a light transformer decoder gets them back on the full grid, a learned mask token in every hidden place, and
predicts the hidden patches' pixels. The loss is the mean squared error over the masked patches only.

Shared judgment calls (both backbones):

* "Patches" for the mask are the encoder's spatial token positions, (H / p) * (W / p) per temporal slice; the masked
  count is ``floor(mask_ratio * that)`` (VideoMAE's ``int(...)``), so at 0.9 a 4 x 4 grid shows 2 positions, not 1.6.
* Targets are taken from the clip in the platform's [-1, 1] units, not VideoMAE's [0, 1]: the normalised target is
  the same up to the epsilon (which weighs half as much here), and raw-pixel targets stay in the units of the input.
* ``norm_pix_loss`` normalises each patch per channel over its tubelet x p x p values: mean and *unbiased* std, then
  ``(x - mean) / (std + 1e-6)``, as VideoMAE's ``engine_for_pretraining.py`` (std plus eps, not sqrt(var + eps)).
* Decoder defaults: width half the encoder's (VideoMAE: ViT-S 384 -> 192, ViT-B 768 -> 384; SVFAP's pretraining model
  as its ``modeling_pretrain.py`` builds it: 768 -> 384), heads width // 64 at least 1 (VideoMAE's and SVFAP's
  64-wide heads: 192 -> 3, 384 -> 6; a tiny test decoder of width 24 gets 1), MLP ratio 4, the
  VideoMAE block (:class:`~trainables.models.video_vit.Block`), LayerNorm eps 1e-6, no dropout or drop path (the
  authors' pretraining scripts leave them at 0), xavier-uniform linear weights (their pretraining init).
* The encoder's last tokens pass a LayerNorm owned by the pretrainer before ``encoder_to_decoder``: the authors'
  pretraining encoders end with ``norm``; fine-tuning drops it (mean pooling + ``fc_norm``), and so does
  :meth:`MaskedAutoencoder.encoder_state`. ``fc_norm`` is exported as the model has it (untouched by this loss), so the
  file loads with no missing key but the heads.
* Frame counts that are not a multiple of ``tubelet_size`` are padded by repeating the last frame, the backbones' own
  rule, for the input and the targets alike; :meth:`MaskedAutoencoder.reconstruct` cuts the padding off again.
* The decoder predicts only the masked tokens (norm and head run on those), as VideoMAE: visible ones are not scored.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.positions import position_table
from trainables.models.tpsbt import _HEADS, TPSBT, fuse_stages  # _HEADS: the task heads, never exported
from trainables.models.video_vit import Block, VideoViT
from trainables.pretrain.masking import tube_mask
from trainables.pretrain.methods import Pretrainer, register_method

__all__ = ["MaskedAutoencoder", "NORM_EPS", "TPSBTMAE", "VideoViTMAE", "patchify", "pixel_targets", "unpatchify"]

#: Added to a patch's std in the normalised target (VideoMAE's value).
NORM_EPS = 1e-6


def pad_frames(clips: torch.Tensor, tubelet: int) -> torch.Tensor:
    """(B, T, C, H, W) -> the same with the last frame repeated until T is a multiple of ``tubelet`` (the backbones'
    rule, so targets line up with the tokens the encoder made)."""
    extra = -clips.shape[1] % tubelet
    if extra:
        clips = torch.cat([clips, clips[:, -1:].expand(-1, extra, -1, -1, -1)], dim=1)
    return clips


def patchify(clips: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, T, C, H, W) with T a multiple of ``tubelet`` -> (B, N, tubelet * patch * patch, C) patches.

    Token order is the encoders' (t, h, w) flattening of the Conv3d output, so token n of the encoder and patch n here
    cover the same pixels; within a patch the values run (frame, row, column), channels last (VideoMAE's layout).
    """
    b, frames, c, h, w = clips.shape
    t, gh, gw = frames // tubelet, h // patch, w // patch
    x = clips.reshape(b, t, tubelet, c, gh, patch, gw, patch)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, t, gh, gw, tubelet, p, p, C)
    return x.reshape(b, t * gh * gw, tubelet * patch * patch, c)


def unpatchify(patches: torch.Tensor, tubelet: int, patch: int, frames: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, tubelet * patch * patch, C) -> (B, frames, C, height, width)."""
    b, _, _, c = patches.shape
    t, gh, gw = frames // tubelet, height // patch, width // patch
    x = patches.reshape(b, t, gh, gw, tubelet, patch, patch, c)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, t, tubelet, C, gh, p, gw, p)
    return x.reshape(b, frames, c, height, width)


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel mean and unbiased std over a patch's tubelet x p x p values: (B, N, 1, C) each."""
    return patches.mean(dim=-2, keepdim=True), patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()


def pixel_targets(patches: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """(B, N, P, C) patches -> (B, N, P * C) regression targets: ``(x - mean) / (std + NORM_EPS)`` per patch and channel
    when ``norm_pix`` (VideoMAE), else the pixels themselves. Computed in float32 whatever the input dtype."""
    patches = patches.float()
    if norm_pix:
        mean, std = patch_stats(patches)
        patches = (patches - mean) / (std + NORM_EPS)
    return patches.flatten(2)


class MaskedAutoencoder(Pretrainer):
    """The backbone-independent part: mask, decoder, loss, reconstruction, export. Subclasses say how the encoder runs
    on the visible tokens (:meth:`encode_visible`) and how it summarises a whole clip (:meth:`encode`).

    The wrapped model is ``self.model``; the decoder, its input projection, the pre-decoder norm and the mask token are
    the pretrainer's own modules, so they never appear among the model's parameters or in :meth:`encoder_state`.

    Args:
        model: the fine-tuning model (heads included; they are ignored here and left out of the export).
        config: the trial's ``TrialConfig`` (or anything with ``mask_ratio``, ``decoder_depth``, ``decoder_width``,
            ``decoder_heads``, ``norm_pix_loss``).

    Raises:
        ValueError: a decoder width that the decoder heads do not divide.
    """

    def __init__(self, model: nn.Module, config: Any):
        super().__init__()
        self.model = model
        self.mask_ratio = float(config.mask_ratio)
        self.norm_pix = bool(config.norm_pix_loss)
        self.tubelet, self.patch = model.tubelet_size, model.patch_size
        self.in_chans = model.patch_embed.proj.in_channels
        dim = model.embed_dim
        width = config.decoder_width or max(1, dim // 2)
        heads = config.decoder_heads or max(1, width // 64)
        if width % heads:
            raise ValueError(f"decoder_width {width} is not a multiple of decoder_heads {heads}")
        self.decoder_width = width
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(dim, width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder = nn.ModuleList(Block(width, heads, 4.0, 0.0, 0.0) for _ in range(int(config.decoder_depth)))
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.decoder_head = nn.Linear(width, self.tubelet * self.patch * self.patch * self.in_chans)
        for module in (self.encoder_to_decoder, self.decoder, self.decoder_head):
            module.apply(self._init_decoder)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_decoder(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- what a backbone provides -------------------------------------------------------------------------------------

    def encode_visible(self, clips: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the visible tokens: (B, t, K, E) on the token grid the decoder reconstructs (``t`` slices of
        ``tubelet_size`` frames, the K positions of ``keep`` (B, K)), computed from those tokens only."""
        raise NotImplementedError

    def _grid(self, clips: torch.Tensor) -> tuple[int, int]:
        """(temporal slices, spatial positions) of the token grid of ``clips``."""
        _, frames, _, h, w = clips.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size {self.patch}")
        return -(-frames // self.tubelet), (h // self.patch) * (w // self.patch)

    # --- the method ---------------------------------------------------------------------------------------------------

    def _predict(self, clips: torch.Tensor, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, encode, decode. Returns (predictions (B, M, P * C) for the masked tokens in grid order, the padded
        clip's patches (B, N, P, C), the token mask (B, N) bool)."""
        if clips.ndim != 5:
            raise ValueError(f"mae expects (B, T, C, H, W) clips, got shape {tuple(clips.shape)}")
        b = clips.shape[0]
        t, s = self._grid(clips)
        keep, masked = tube_mask(b, s, self.mask_ratio, generator)
        keep, masked = keep.to(clips.device), masked.to(clips.device)

        visible = self.encode_visible(clips, keep)  # (B, t, K, E)
        visible = self.encoder_to_decoder(self.encoder_norm(visible))
        width = visible.shape[-1]
        index = keep[:, None, :, None].expand(-1, t, -1, width)
        tokens = self.mask_token.to(visible.dtype).expand(b, t, s, width).scatter(2, index, visible)
        tokens = tokens.reshape(b, t * s, width) + position_table(t * s, width, tokens.device, tokens.dtype)
        for block in self.decoder:
            tokens = block(tokens)
        token_mask = masked[:, None, :].expand(-1, t, -1).reshape(b, t * s)
        hidden = tokens[token_mask].reshape(b, -1, width)  # every clip masks the same count
        pred = self.decoder_head(self.decoder_norm(hidden))
        patches = patchify(pad_frames(clips, self.tubelet), self.tubelet, self.patch)
        return pred, patches, token_mask

    def forward(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """clips (B, T, C, H, W) in [-1, 1] -> {"loss": MSE over the masked patches, "masked_share": the share of
        tokens masked (detached), "target_std": the std of the masked targets (detached; about 1 with
        ``norm_pix_loss``, so the loss reads against it)}."""
        pred, patches, token_mask = self._predict(clips, generator)
        b = clips.shape[0]
        with torch.no_grad():
            target = pixel_targets(patches, self.norm_pix)[token_mask].reshape(b, -1, pred.shape[-1])
        loss = F.mse_loss(pred.float(), target)
        return {"loss": loss, "masked_share": token_mask.float().mean().detach(), "target_std": target.std().detach()}

    @torch.no_grad()
    def reconstruct(self, clips: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input: masked patches set to 0, reconstruction: visible patches from the input and masked ones
        predicted), both like ``clips``, clamped to [-1, 1]. With ``norm_pix_loss`` a prediction is in normalised units
        and is mapped back with the mean and std of the target patch itself (as VideoMAE's visualisation does; the
        model never sees them, so the picture shows structure, not the recovery of a patch's brightness)."""
        pred, patches, token_mask = self._predict(clips, generator)
        patches = patches.float()
        b, _, size, c = patches.shape
        pred = pred.float().reshape(b, -1, size, c)
        if self.norm_pix:
            mean, std = patch_stats(patches)
            pred = pred * (std[token_mask].reshape(b, -1, 1, c) + NORM_EPS) + mean[token_mask].reshape(b, -1, 1, c)
        masked_input, rebuilt = patches.clone(), patches.clone()
        masked_input[token_mask] = 0.0
        rebuilt[token_mask] = pred.reshape(-1, size, c)
        frames, _, h, w = clips.shape[1:]
        padded = -(-frames // self.tubelet) * self.tubelet
        out = [unpatchify(x, self.tubelet, self.patch, padded, h, w)[:, :frames].clamp(-1.0, 1.0).to(clips.dtype)
               for x in (masked_input, rebuilt)]
        return out[0], out[1]

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict without its heads (``head.``, ``cls_head.``), detached CPU copies, in the model's own
        key layout, which its checkpoint loader reads as it is (``checkpoint=`` of the backbone)."""
        return {key: value.detach().cpu().clone() for key, value in self.model.state_dict().items()
                if not key.startswith(_HEADS)}


class VideoViTMAE(MaskedAutoencoder):
    """VideoMAE pretraining of a :class:`~trainables.models.video_vit.VideoViT`: patch embedding, the full grid's
    sinusoid table added, the visible tokens gathered, the blocks (VideoMAE's ``PretrainVisionTransformerEncoder``)."""

    model: VideoViT

    def encode_visible(self, clips: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        t, s = self._grid(clips)
        # The Conv3d's stride equals its kernel, so a token depends on its own patch only: embedding the whole clip
        # and dropping the masked tokens leaks nothing (the tests check it).
        tokens = self.model.patch_embed.proj(pad_frames(clips, self.tubelet).transpose(1, 2)).flatten(2).transpose(1, 2)
        tokens = tokens + self.model.position_table(t * s, tokens.device, tokens.dtype)
        b, _, d = tokens.shape
        index = keep[:, None, :, None].expand(-1, t, -1, d)
        tokens = self.model.pos_drop(tokens.view(b, t, s, d).gather(2, index).reshape(b, -1, d))
        for block in self.model.blocks:
            tokens = block(tokens)
        return tokens.view(b, t, keep.shape[1], d)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, t, s, E): the unmasked clip's last-block tokens per temporal slice and spatial position."""
        t, s = self._grid(clips)
        tokens = self.model.forward_features(clips)
        return tokens.view(tokens.shape[0], t, s, -1)


class TPSBTMAE(MaskedAutoencoder):
    """SVFAP pretraining of a :class:`~trainables.models.tpsbt.TPSBT`: ``forward_stages(clips, keep)`` on the visible
    positions, the stages fused onto stage 1's grid (:func:`~trainables.models.tpsbt.fuse_stages`), the decoder.

    Deviation from the authors' code, on purpose: their pretraining encoder runs each stage's reverse block with
    ``context=x``, the patch embeddings of the *whole* clip, masked positions included. The masked content then
    reaches the encoder (reconstruction can copy it rather than infer it), and the reverse block attends to the
    embeddings instead of the bottleneck tokens, so the SBT blocks before it get no gradient at all. Here the reverse
    block attends to the bottleneck of the visible tokens, as the paper describes and as fine-tuning runs it; the path
    is leak-free (``TPSBT.forward_stages`` with ``keep``) and every encoder parameter learns (the tests check both).
    """

    model: TPSBT

    def encode_visible(self, clips: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        stages = self.model.forward_stages(clips, keep)
        t, k = stages[0].grid
        fused = fuse_stages(stages)
        return fused.view(fused.shape[0], t, k, -1)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, t, s, D): the unmasked clip's last-stage tokens per temporal slice and spatial position (t = the last
        stage's slices, a quarter of stage 1's for three stages)."""
        last = self.model.forward_stages(clips)[-1]
        t, s = last.grid
        return last.tokens.view(last.tokens.shape[0], t, s, -1)


@register_method("mae")
def masked_autoencoder(model: nn.Module, config: Any) -> MaskedAutoencoder:
    """The ``mae`` pretrainer for ``model``: :class:`VideoViTMAE` or :class:`TPSBTMAE` by the model's class.

    Raises:
        ValueError: another backbone (mae needs a transformer that can drop the masked tokens).
    """
    if isinstance(model, VideoViT):
        return VideoViTMAE(model, config)
    if isinstance(model, TPSBT):
        return TPSBTMAE(model, config)
    raise ValueError(f"pretraining method 'mae' fits the video_vit and tpsbt backbones, not {type(model).__name__}")
