"""Tests for masked video autoencoding: ``trainables.pretrain.masking`` (tube masks) and ``trainables.pretrain.mae``
(the ``mae`` pretrainer of the video_vit and tpsbt backbones), on the tiny variants."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainables.config import TrialConfig
from trainables.loop import build_model
from trainables.models.registry import create_backbone
from trainables.pretrain.mae import (NORM_EPS, TPSBTMAE, VideoViTMAE, masked_autoencoder, pad_frames, patchify,
                                     pixel_targets, unpatchify)
from trainables.pretrain.masking import tube_mask
from trainables.pretrain.methods import create_pretrainer

BACKBONES = ("video_vit_tiny", "tpsbt_tiny")
# 8 frames give the tiny TPSBT 4 -> 2 -> 1 temporal slices (every stage's convolution runs); 32x32 with 8-pixel
# patches is a 4x4 grid, which mask ratio 0.75 leaves 4 visible positions (0.9 would leave 2).
FRAMES, SIZE, PATCH = 8, 32, 8


def _config(**overrides) -> SimpleNamespace:
    values = dict(mask_ratio=0.75, decoder_depth=1, decoder_width=None, decoder_heads=None, norm_pix_loss=True)
    return SimpleNamespace(**{**values, **overrides})


def _clips(batch: int = 2, frames: int = FRAMES, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth moving gradients plus a little noise, in [-1, 1]: structure a decoder can learn to fill in."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[None, :, None, None, None]
    c = torch.arange(3, dtype=torch.float32)[None, None, :, None, None]
    y = torch.linspace(0, 1, size)[None, None, None, :, None]
    x = torch.linspace(0, 1, size)[None, None, None, None, :]
    phase = torch.rand(batch, 1, 1, 1, 1, generator=g) * 6.0
    clips = torch.sin(3 * x + 2 * y + 0.3 * t + c + phase) * 0.8
    return (clips + 0.05 * torch.randn(clips.shape, generator=g)).clamp(-1, 1)


def _pretrainer(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = create_backbone(name)
    return model, masked_autoencoder(model, _config(**overrides))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- tube masks -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio, spatial", [(0.9, 16), (0.9, 196), (0.75, 64), (0.5, 7), (0.95, 100), (0.1, 12)])
def test_tube_mask_counts(ratio, spatial):
    keep, masked = tube_mask(5, spatial, ratio, torch.Generator().manual_seed(3))
    n_masked = math.floor(ratio * spatial)
    assert masked.dtype == torch.bool and masked.shape == (5, spatial)
    assert keep.dtype == torch.long and keep.shape == (5, spatial - n_masked)
    assert masked.sum(dim=1).tolist() == [n_masked] * 5
    assert torch.equal(keep, keep.sort(dim=1).values)
    # keep is exactly the complement of masked
    visible = torch.zeros_like(masked)
    visible.scatter_(1, keep, True)
    assert torch.equal(visible, ~masked)


def test_tube_mask_is_seeded_and_differs_across_clips():
    first = tube_mask(8, 64, 0.9, torch.Generator().manual_seed(7))
    again = tube_mask(8, 64, 0.9, torch.Generator().manual_seed(7))
    other = tube_mask(8, 64, 0.9, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert len({tuple(row.tolist()) for row in first[0]}) == 8


@pytest.mark.parametrize("ratio, spatial, message", [(1.0, 16, "none would stay visible"),
                                                     (0.99, 16, None), (0.2, 4, "masks none"), (0.0, 16, "masks none"),
                                                     (1.5, 16, "must lie in")])
def test_tube_mask_errors(ratio, spatial, message):
    if message is None:  # 15 of 16 masked: legal
        assert tube_mask(1, spatial, ratio)[0].shape == (1, 1)
        return
    with pytest.raises(ValueError, match=message):
        tube_mask(1, spatial, ratio)


@pytest.mark.parametrize("name", BACKBONES)
def test_mask_is_a_tube_through_time(name):
    """The masked input's zeroed patches sit at the same places in every frame, and at the configured share."""
    _, pretrainer = _pretrainer(name)
    clips = _clips().abs() + 0.1  # no pixel is 0 by itself
    masked_input, _ = pretrainer.reconstruct(clips, torch.Generator().manual_seed(1))
    zero = masked_input == 0  # (B, T, C, H, W)
    assert torch.equal(zero, zero[:, :1].expand_as(zero))
    grid = zero[:, 0, 0, ::PATCH, ::PATCH]  # (B, 4, 4): one value per patch
    assert grid.flatten(1).sum(dim=1).tolist() == [math.floor(0.75 * 16)] * 2
    assert torch.equal(zero[:, 0, 0], grid.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2))


# --- the encoder sees the visible tokens only -------------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKBONES)
def test_masked_pixels_do_not_reach_the_encoder(name):
    _, pretrainer = _pretrainer(name)
    pretrainer.eval()
    clips = _clips(frames=7)  # 7 frames: the padded last tubelet repeats a frame, masked places included
    keep, masked = tube_mask(2, 16, 0.75, torch.Generator().manual_seed(2))
    pixels = masked.view(2, 1, 1, 4, 4).repeat_interleave(PATCH, 3).repeat_interleave(PATCH, 4)
    noise = torch.rand(clips.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    changed = torch.where(pixels, noise, clips)
    assert not torch.equal(changed, clips)
    with torch.no_grad():
        before = pretrainer.encode_visible(clips, keep)
        after = pretrainer.encode_visible(changed, keep)
        assert before.shape == (2, 4, 4, 48)  # (B, stage-1 slices, visible positions, width)
        assert torch.equal(before, after)
        # A visible pixel, by contrast, does reach it (so this test can fail).
        position = int(keep[0, 0])
        touched = clips.clone()
        touched[0, 0, :, (position // 4) * PATCH, (position % 4) * PATCH] += 0.5
        assert not torch.allclose(pretrainer.encode_visible(touched, keep)[0], before[0])
        assert torch.equal(pretrainer.encode_visible(touched, keep)[1], before[1])


# --- training signal --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKBONES)
def test_every_encoder_parameter_learns(name):
    """Every encoder parameter (the model's, except the heads and the fine-tuning ``fc_norm``, which the pooled head
    uses) gets a non-zero gradient; the decoder's parameters are the pretrainer's, not the model's."""
    model, pretrainer = _pretrainer(name)
    out = pretrainer(_clips(), torch.Generator().manual_seed(0))
    assert set(out) >= {"loss", "masked_share"} and out["loss"].requires_grad
    assert not out["masked_share"].requires_grad and out["masked_share"].item() == pytest.approx(12 / 16)
    out["loss"].backward()
    encoder = {n: p for n, p in model.named_parameters() if not n.startswith(("head.", "cls_head.", "fc_norm."))}
    silent = [n for n, p in encoder.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
    own = {id(p) for p in model.parameters()}
    extra = [n for n, p in pretrainer.named_parameters() if id(p) not in own]
    assert extra and all(n.startswith(("encoder_norm.", "encoder_to_decoder.", "mask_token", "decoder")) for n in extra)
    assert pretrainer.mask_token.grad is not None and pretrainer.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_loss_falls_on_one_batch(name):
    _, pretrainer = _pretrainer(name)
    optimiser = torch.optim.Adam(pretrainer.parameters(), lr=3e-3)
    clips, losses = _clips(), []
    for _ in range(20):
        loss = pretrainer(clips, torch.Generator().manual_seed(0))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses  # measured: about 0.65


@pytest.mark.parametrize("name", BACKBONES)
def test_runs_under_autocast(name):
    _, pretrainer = _pretrainer(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pretrainer(_clips(), torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32 and math.isfinite(out["loss"].item())
    out["loss"].backward()


# --- targets and reconstruction ---------------------------------------------------------------------------------------

def test_norm_pix_target_of_one_patch_by_hand():
    clips = _clips()
    patches = patchify(clips, 2, PATCH)
    assert patches.shape == (2, 4 * 16, 2 * PATCH * PATCH, 3)
    # Token 1 * 16 + 2 * 4 + 3: temporal slice 1 (frames 2-3), patch row 2, column 3.
    b, n = 1, 1 * 16 + 2 * 4 + 3
    cube = clips[b, 2:4, :, 2 * PATCH:3 * PATCH, 3 * PATCH:4 * PATCH]  # (tubelet, C, p, p)
    values = cube.permute(0, 2, 3, 1).reshape(-1, 3)  # (tubelet * p * p, C), VideoMAE's order
    mean = values.sum(dim=0) / values.shape[0]
    std = ((values - mean) ** 2).sum(dim=0).div(values.shape[0] - 1).sqrt()  # unbiased
    by_hand = ((values - mean) / (std + NORM_EPS)).flatten()
    torch.testing.assert_close(pixel_targets(patches, True)[b, n], by_hand, rtol=1e-5, atol=1e-5)
    assert torch.equal(pixel_targets(patches, False)[b, n], values.flatten())


def test_patchify_round_trip_and_padding():
    clips = _clips(frames=5)
    padded = pad_frames(clips, 2)
    assert padded.shape[1] == 6 and torch.equal(padded[:, 5], clips[:, 4])
    assert torch.equal(unpatchify(patchify(padded, 2, PATCH), 2, PATCH, 6, SIZE, SIZE), padded)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruct_keeps_visible_patches(name, norm_pix):
    _, pretrainer = _pretrainer(name, norm_pix_loss=norm_pix)
    clips = _clips(frames=7).abs() + 0.05  # away from 0, so a zeroed patch is told apart
    masked_input, rebuilt = pretrainer.reconstruct(clips, torch.Generator().manual_seed(4))
    assert masked_input.shape == rebuilt.shape == clips.shape
    assert rebuilt.min() >= -1 and rebuilt.max() <= 1
    visible = masked_input != 0
    assert torch.equal(masked_input[visible], clips[visible])
    assert torch.equal(rebuilt[visible], clips[visible])
    assert not torch.equal(rebuilt[~visible], clips[~visible])


# --- export -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKBONES)
def test_encoder_state_loads_through_the_backbone_loader(name, tmp_path):
    model, pretrainer = _pretrainer(name)
    optimiser = torch.optim.Adam(pretrainer.parameters(), lr=1e-2)
    pretrainer(_clips(), torch.Generator().manual_seed(0))["loss"].backward()
    optimiser.step()  # move the encoder away from any initialisation a fresh model could share
    state = pretrainer.encoder_state()
    assert all(v.device.type == "cpu" for v in state.values())
    assert not any(k.startswith(("head.", "cls_head.", "decoder", "encoder_to_decoder", "mask_token")) for k in state)
    path = tmp_path / "encoder.pth"
    torch.save(state, path)

    torch.manual_seed(123)
    fresh = create_backbone(name, checkpoint=str(path))
    report = fresh.load_report
    assert sorted(report.loaded) == sorted(state)
    assert report.unexpected == [] and report.mismatched == []
    assert all(k.startswith(("head.", "cls_head.")) for k in report.missing)
    model.eval(), fresh.eval()
    clips = _clips(seed=3)
    with torch.no_grad():
        assert torch.equal(fresh.forward_features(clips), model.forward_features(clips))
        assert torch.equal(fresh.forward_head(fresh.forward_features(clips), pre_logits=True),
                           model.forward_head(model.forward_features(clips), pre_logits=True))
        assert torch.equal(masked_autoencoder(fresh, _config()).encode(clips), pretrainer.encode(clips))


@pytest.mark.parametrize("name, slices", [("video_vit_tiny", 4), ("tpsbt_tiny", 1)])
def test_encode_shape(name, slices):
    _, pretrainer = _pretrainer(name)
    with torch.no_grad():
        assert pretrainer.encode(_clips()).shape == (2, slices, 16, 48)  # 32 x 32 frames, 8-pixel patches


# --- the registry -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("video_vit_tiny", VideoViTMAE), ("tpsbt_tiny", TPSBTMAE)])
def test_registry_builds_from_a_trial_config(name, kind):
    config = TrialConfig.from_dict({"backbone": name, "pretrain_method": "mae", "decoder_depth": 1})
    model = build_model(config, out_dims=2)
    pretrainer = create_pretrainer("mae", model, config)
    assert isinstance(pretrainer, kind) and pretrainer.model is model
    assert pretrainer.mask_ratio == 0.9 and pretrainer.norm_pix and len(pretrainer.decoder) == 1
    assert pretrainer.decoder_width == 24 and pretrainer.decoder[0].attn.num_heads == 1  # half of 48; 24 // 64 -> 1
    out = pretrainer(_clips(batch=1, size=64), torch.Generator().manual_seed(0))  # 0.9 of 64 positions: 57 masked
    assert out["masked_share"].item() == pytest.approx(57 / 64)


def test_registry_refuses_other_backbones():
    config = TrialConfig.from_dict({"backbone": "video_vit_tiny", "pretrain_method": "mae"})
    with pytest.raises(ValueError, match=r"'mae' fits the video_vit and tpsbt backbones, not CnnRnn"):
        create_pretrainer("mae", create_backbone("cnn_rnn_tiny"), config)


def test_decoder_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="decoder_width 24 is not a multiple of decoder_heads 5"):
        _pretrainer("video_vit_tiny", decoder_heads=5)
