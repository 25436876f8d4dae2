"""Tests for trainables.models.tpsbt: SVFAP's TPSBT encoder (paper 002)."""

from __future__ import annotations

import argparse

import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from trainables.errors import ConfigError
from trainables.models import backbone_arguments, create_backbone, list_backbones
from trainables.data.sampling import uniform_clip_starts
from trainables.models.positions import sinusoid_table as _sinusoid_table
from trainables.models.tpsbt import EVAL_CLIPS, TPSBT, SpatialPool, fuse_stages, load_svfap_checkpoint

B = 2


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model's ops are too small to gain from intra-op threads; on a shared 2-core machine the second thread
    only adds contention (measured: 0.2-0.7 s per step with 2 threads, 0.03-0.07 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(seed: int = 0, **kwargs) -> TPSBT:
    torch.manual_seed(seed)
    return create_backbone("tpsbt_tiny", **kwargs)


def _clip(frames: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- registry and variants ------------------------------------------------------------------------------------------

def test_variants_are_registered_with_their_settable_arguments() -> None:
    assert {"tpsbt", "tpsbt_base", "tpsbt_tiny"} <= set(list_backbones())
    common = {"patch_size", "tubelet_size", "img_size", "num_frames", "bottleneck_tokens", "drop_path", "checkpoint"}
    assert backbone_arguments("tpsbt") == common | {"embed_dim", "depths", "num_heads", "mlp_ratio"}
    # Base fixes the released architecture so the authors' checkpoint always fits; tiny its size.
    assert backbone_arguments("tpsbt_base") == common
    assert backbone_arguments("tpsbt_tiny") == common | {"mlp_ratio"}


def test_variant_sizes() -> None:
    small, base, tiny = (create_backbone(n) for n in ("tpsbt", "tpsbt_base", "tpsbt_tiny"))
    assert (small.embed_dim, small.depths, len(small.blocks)) == (384, (8, 4, 2), 14)
    assert (base.embed_dim, base.depths, len(base.blocks)) == (512, (12, 6, 3), 21)
    assert (tiny.embed_dim, tiny.depths, tiny.patch_size, tiny.img_size) == (48, (1, 2, 2), 8, 32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The paper: TPSBT-B 78M, TPSBT-S 30M parameters.
    assert 76e6 < count(base) < 80e6
    assert 28e6 < count(small) < 31e6
    assert base.blocks[0].attn.heads == 8 and small.blocks[0].attn.heads == 6
    # Explicit settings still win over a variant's defaults.
    assert create_backbone("tpsbt_tiny", bottleneck_tokens=4).bottleneck_tokens == 4


# --- shapes, frame counts, gradients --------------------------------------------------------------------------------

def test_output_shapes_and_timm_methods() -> None:
    model = _tiny(n_bins=5, out_dims=3)
    x = _clip()
    out = model(x)
    assert set(out) == {"window", "logits"}
    assert out["window"].shape == (B, 3)
    assert out["logits"].shape == (B, 3, 5)
    tokens = model.forward_features(x)
    assert tokens.shape == (B, 2 * 16, 48)  # 16 frames -> 8 slices -> 4 -> 2; 32 / 8 = 4x4 patches
    pooled = model.forward_head(tokens, pre_logits=True)
    assert pooled.shape == (B, 48)
    torch.testing.assert_close(model.forward_head(tokens), out["window"])
    torch.testing.assert_close(model.head(pooled), out["window"])


@pytest.mark.parametrize(("frames", "slices"), [(16, (8, 4, 2)), (8, (4, 2, 1)), (4, (2, 1, 1)), (3, (2, 1, 1)),
                                                (2, (1, 1, 1))])
def test_frame_counts_forward_and_backward(frames: int, slices: tuple[int, int, int]) -> None:
    model = _tiny()
    x = _clip(frames).requires_grad_(True)
    stages = model.forward_stages(x)
    assert [s.grid for s in stages] == [(t, 16) for t in slices]
    out = model(x)["window"]
    assert out.shape == (B, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Every real frame reaches the output, including the last one that padding repeats.
    assert (x.grad[:, -1].abs().sum() > 0) and (x.grad[:, 0].abs().sum() > 0)


def test_odd_frame_count_repeats_the_last_frame() -> None:
    model = _tiny().eval()
    x = _clip(3)
    padded = torch.cat([x, x[:, -1:]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["window"], model(padded)["window"], rtol=0, atol=0)


def test_every_parameter_gets_a_gradient() -> None:
    model = _tiny(n_bins=3, drop_path=0.1).train()
    out = model(_clip())
    (out["window"].pow(2).mean() + out["logits"].pow(2).mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_frame_size_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(ValueError, match=r"30x30 is not a multiple of patch_size 8"):
        _tiny()(_clip(size=30))


def test_other_resolutions_run() -> None:
    out = _tiny()(_clip(frames=4, size=48))["window"]
    assert out.shape == (B, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("depths", [(1, 0, 1), (), (1, 1, -1)])
def test_rejects_bad_depths(depths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="depths"):
        TPSBT(embed_dim=12, num_heads=2, depths=depths, patch_size=8, img_size=32)


# --- temporal pyramid and spatial bottleneck ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [8, 4])
def test_token_counts_per_stage(k: int) -> None:
    model = _tiny(bottleneck_tokens=k)
    stages = model.forward_stages(_clip(16))
    # Stage 1: 8 slices x 16 patches; each temporal Conv1d halves the slices; full tokens are restored per stage.
    assert [s.tokens.shape[1] for s in stages] == [128, 64, 32]
    assert stages[0].bottleneck is None
    assert [s.bottleneck.shape[1] for s in stages[1:]] == [4 * k, 2 * k]
    for conv in model.temporal_downsamples:
        assert isinstance(conv, nn.Conv1d) and conv.kernel_size == (2,) and conv.stride == (2,)


def test_temporal_conv_mixes_pairs_of_slices_only() -> None:
    conv = _tiny().temporal_downsamples[0]
    seq = torch.randn(3, 48, 4)  # (batch x positions, D, slices)
    later = seq.clone()
    later[..., 2:] += 1.0
    with torch.no_grad():
        # Output slice 0 sees input slices 0 and 1 only; output slice 1 sees 2 and 3.
        assert conv(seq).shape == (3, 48, 2)
        assert torch.equal(conv(seq)[..., 0], conv(later)[..., 0])
        assert not torch.equal(conv(seq)[..., 1], conv(later)[..., 1])


def test_spatial_pool_of_a_constant_slice_is_that_constant() -> None:
    torch.manual_seed(0)
    pool = SpatialPool(16, tokens=8)
    # Two slices of 5 identical tokens each: the softmax weights sum to 1, so every bottleneck token is the token.
    v = torch.randn(2, 1, 1, 16).expand(2, 2, 5, 16).clone()
    v[:, 1] += 3.0
    pooled = pool(v.reshape(2, 10, 16), t=2)
    assert pooled.shape == (2, 2 * 8, 16)
    torch.testing.assert_close(pooled.view(2, 2, 8, 16), v[:, :, :1].expand(2, 2, 8, 16))


def test_masked_pretraining_path_and_fusion() -> None:
    model = _tiny().eval()
    x = _clip(16)
    with torch.no_grad():
        full = model.forward_stages(x)
        # Keeping every position in order is the unmasked encoder.
        everything = model.forward_stages(x, keep=torch.arange(16).expand(B, 16))
        torch.testing.assert_close(everything[-1].tokens, full[-1].tokens)
        # Tube masking: 3 of 16 positions visible in every slice (another 3 per clip).
        keep = torch.tensor([[0, 5, 9], [2, 3, 15]])
        masked = model.forward_stages(x, keep=keep)
    assert [s.grid for s in masked] == [(8, 3), (4, 3), (2, 3)]
    fused = fuse_stages(masked)
    assert fused.shape == (B, 8 * 3, 48)
    # Nearest upsampling: stage-1 slice 5 adds stage-2 slice 2 and stage-3 slice 1.
    expect = (masked[0].tokens.view(B, 8, 3, 48)[:, 5] + masked[1].tokens.view(B, 4, 3, 48)[:, 2]
              + masked[2].tokens.view(B, 2, 3, 48)[:, 1])
    torch.testing.assert_close(fused.view(B, 8, 3, 48)[:, 5], expect)


def test_position_table_is_the_sinusoid_formula() -> None:
    table = _sinusoid_table(10, 6)
    for pos, i in [(0, 0), (3, 0), (7, 2), (9, 4)]:
        angle = pos / 10000 ** (i / 6)
        assert table[pos, i].item() == pytest.approx(math.sin(angle))
        assert table[pos, i + 1].item() == pytest.approx(math.cos(angle))


# --- determinism ----------------------------------------------------------------------------------------------------

def test_same_seed_same_model_and_eval_is_deterministic() -> None:
    x = _clip()
    a, b = _tiny(seed=5, drop_path=0.2).eval(), _tiny(seed=5, drop_path=0.2).eval()
    with torch.no_grad():
        assert torch.equal(a(x)["window"], b(x)["window"])
        assert torch.equal(a(x)["window"], a(x)["window"])
        assert not torch.equal(_tiny(seed=6).eval()(x)["window"], a(x)["window"])
    # Drop path is stochastic in training only, and its rate rises linearly to the last block.
    assert a.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert isinstance(a.blocks[0].drop_path, nn.Identity)


def test_tiny_trains_fast_on_cpu() -> None:
    model = _tiny().train()
    x = _clip(16)
    model(x)["window"].sum().backward()  # warm-up
    start = time.perf_counter()
    model(x)["window"].sum().backward()
    assert time.perf_counter() - start < 1.0


# --- inference clips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_frames", "clip_len", "clips", "starts"), [
    (100, 64, 2, [0, 36]),
    (64, 64, 2, [0, 0]),
    (10, 64, 2, [0, 0]),
    (100, 64, 3, [0, 18, 36]),
    (101, 64, 3, [0, 18, 37]),
    (100, 64, 1, [18]),
    (16, 16, 1, [0]),
    (0, 16, 2, [0, 0]),
])
def test_uniform_clip_starts(n_frames: int, clip_len: int, clips: int, starts: list[int]) -> None:
    got = uniform_clip_starts(n_frames, clip_len, clips)
    assert got == starts
    assert all(s + clip_len <= max(n_frames, clip_len) for s in got)


def test_uniform_clip_starts_defaults_to_the_papers_two_clips() -> None:
    assert EVAL_CLIPS == 2
    assert uniform_clip_starts(200, 64) == [0, 136]
    with pytest.raises(ValueError):
        uniform_clip_starts(10, 0)
    with pytest.raises(ValueError):
        uniform_clip_starts(10, 4, clips=0)


# --- checkpoints ----------------------------------------------------------------------------------------------------

def _saved(tmp_path: Path, layout: str) -> tuple[TPSBT, Path]:
    source = _tiny(seed=1, n_bins=2)
    state = source.state_dict()
    if layout == "pretrain":
        file = {f"encoder.{k}": v for k, v in state.items() if not k.startswith(("head.", "cls_head.", "fc_norm."))}
        file["encoder.norm.weight"] = torch.ones(48)  # the norm before the decoder; no place in this model
        file["encoder.norm.bias"] = torch.zeros(48)
        file["decoder.blocks.0.attn.qkv.weight"] = torch.randn(96, 32)
        file["decoder.head.weight"] = torch.randn(3 * 2 * 8 * 8, 32)
        file["encoder_to_decoder.weight"] = torch.randn(32, 48)
        file["mask_token"] = torch.randn(1, 1, 32)
        obj: object = {"model": file}
    else:
        obj = {"model": dict(state), "epoch": 99}
    # As SVFAP's utils.save_model writes every file: the run's argparse.Namespace under "args", and the optimizer's
    # and scaler's states.
    obj.update({"args": argparse.Namespace(model="pretrain_svfap_base", mask_ratio=0.9, depth=[2, 2, 2]),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0]}]},
                "scaler": {"scale": 65536.0}})
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    return source, path


@pytest.mark.parametrize("layout", ["pretrain", "finetuned"])
def test_checkpoint_round_trip(tmp_path: Path, layout: str) -> None:
    source, path = _saved(tmp_path, layout)
    fresh = _tiny(seed=2, n_bins=2)
    head_before = fresh.head.weight.detach().clone()
    loaded = create_backbone("tpsbt_tiny", n_bins=2, checkpoint=str(path))
    report = loaded.load_report
    x = _clip()
    source.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x), rtol=0, atol=1e-6)
    # The head is never loaded: its file keys are ignored, the model's reported missing.
    assert not torch.equal(loaded.head.weight, source.head.weight)
    assert {"head.weight", "head.bias", "cls_head.weight", "cls_head.bias"} <= set(report.missing)
    assert "patch_embed.proj.weight" in report.loaded and "temporal_downsamples.1.weight" in report.loaded
    if layout == "pretrain":
        assert {"decoder.blocks.0.attn.qkv.weight", "encoder_to_decoder.weight", "mask_token"} <= set(report.ignored)
        # Reported as the file writes them.
        assert set(report.unexpected) == {"encoder.norm.weight", "encoder.norm.bias"}
        assert {"fc_norm.weight", "fc_norm.bias"} <= set(report.missing)
    else:
        assert {"head.weight", "cls_head.weight"} <= set(report.ignored)
        assert report.unexpected == []
        assert set(report.missing) == {"head.weight", "head.bias", "cls_head.weight", "cls_head.bias"}
    # Loading into an existing model works the same way, and leaves its head alone.
    load_svfap_checkpoint(fresh, path)
    assert torch.equal(fresh.head.weight, head_before)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_features(x), source.forward_features(x), rtol=0, atol=1e-6)


def test_missing_checkpoint_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "svfap.pth"
    with pytest.raises(ConfigError, match="nowhere/svfap.pth"):
        create_backbone("tpsbt_tiny", checkpoint=str(path))


def test_unreadable_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth"):
        create_backbone("tpsbt_tiny", checkpoint=str(path))


def test_checkpoint_of_another_size_is_a_config_error(tmp_path: Path) -> None:
    _, path = _saved(tmp_path, "finetuned")
    with pytest.raises(ConfigError, match="finetuned.pth.*another model size"):
        create_backbone("tpsbt_tiny", checkpoint=str(path), bottleneck_tokens=4)


def test_checkpoint_without_encoder_weights_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3), "head.weight": torch.randn(2, 4)}, path)
    with pytest.raises(ConfigError, match="resnet.pth holds no TPSBT"):
        create_backbone("tpsbt_tiny", checkpoint=str(path))


def test_layer_decay_depths_follow_the_stages() -> None:
    """Blocks in order, each stage's downsampling with its first block, the head on top; the groups scale by depth."""
    from trainables.models.video_vit import layer_decay_groups

    model = create_backbone("tpsbt_tiny")  # depths (1, 2, 2)
    assert model.depth == 5
    assert model.layer_id("patch_embed.proj.weight") == 0
    assert model.layer_id("blocks.0.attn.qkv.weight") == 1 and model.layer_id("blocks.4.mlp.fc2.bias") == 5
    assert model.layer_id("temporal_downsamples.0.weight") == 2 == model.layer_id("blocks.1.norm1.weight")
    assert model.layer_id("spatial_downsamples.1.norm.weight") == 4 == model.layer_id("blocks.3.norm1.weight")
    assert model.layer_id("head.weight") == 6 == model.layer_id("fc_norm.weight")
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    assert {g["layer_id"]: g["lr"] for g in groups} == {i: 0.5 ** (6 - i) for i in range(7)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
