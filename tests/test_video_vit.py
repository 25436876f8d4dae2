"""Tests for trainables.models.video_vit (paper 000's VideoMAE backbone) and its use of the one checkpoint reader.

The reference is a tiny random ``transformers`` VideoMAE. Its weights are written in the three layouts VideoMAE is
published in; the official layouts are converted here, key by key, independently of the loader's own mapping.
"""
from __future__ import annotations

import argparse

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from trainables.errors import ConfigError
from trainables.models import backbone_arguments, create_backbone
from trainables.models.positions import sinusoid_table
from trainables.models.pretrained import LoadReport, read_state_dict
from trainables.models.video_vit import VideoViT, layer_decay_groups, load_videomae_checkpoint

transformers = pytest.importorskip("transformers")

DIM, DEPTH, HEADS, PATCH, SIZE, FRAMES = 48, 2, 3, 8, 32, 4
SMALL = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "patch_size": PATCH, "img_size": SIZE,
         "num_frames": FRAMES}
SSTS_FRAME_COUNTS = [24 // s for s in (1, 2, 3, 4, 6, 8, 12)]  # 24, 12, 8, 6, 4, 3, 2


def _hf_config(**overrides) -> transformers.VideoMAEConfig:
    settings = dict(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * DIM,
                    image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2, use_mean_pooling=True,
                    qkv_bias=True, num_labels=5, attn_implementation="eager")
    return transformers.VideoMAEConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def hf_model() -> transformers.VideoMAEForVideoClassification:
    """A random VideoMAE classifier; every tensor redrawn so zero-initialised biases are tested too."""
    torch.manual_seed(0)
    model = transformers.VideoMAEForVideoClassification(_hf_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.2 * torch.randn_like(param))
    return model


def _clip(t: int = FRAMES, size: int = SIZE, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference(hf: transformers.VideoMAEForVideoClassification, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last_hidden_state, fc_norm(mean(tokens))): what transformers computes and feeds its classifier."""
    with torch.no_grad():
        tokens = hf.videomae(x).last_hidden_state
        return tokens, hf.fc_norm(tokens.mean(1))


def _official_finetuned(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keys -> the official VideoMAE fine-tuning keys (timm names, fused bias-free qkv)."""
    out = {"patch_embed.proj.weight": hf_state["videomae.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hf_state["videomae.embeddings.patch_embeddings.projection.bias"],
           "fc_norm.weight": hf_state["fc_norm.weight"], "fc_norm.bias": hf_state["fc_norm.bias"],
           "head.weight": hf_state["classifier.weight"], "head.bias": hf_state["classifier.bias"]}
    for i in range(DEPTH):
        hf, ours = f"videomae.encoder.layer.{i}.", f"blocks.{i}."
        attn = hf + "attention.attention."
        out[ours + "attn.qkv.weight"] = torch.cat([hf_state[attn + "query.weight"], hf_state[attn + "key.weight"],
                                                   hf_state[attn + "value.weight"]], dim=0)
        out[ours + "attn.q_bias"] = hf_state[attn + "query.bias"]
        out[ours + "attn.v_bias"] = hf_state[attn + "value.bias"]
        for theirs, mine in [("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                             ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                             ("output.dense", "mlp.fc2")]:
            for kind in ("weight", "bias"):
                out[f"{ours}{mine}.{kind}"] = hf_state[f"{hf}{theirs}.{kind}"]
    return out


def _official_pretraining(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official pretraining layout: the encoder under ``encoder.`` with a final norm, plus decoder tensors."""
    encoder = {k: v for k, v in _official_finetuned(hf_state).items() if not k.startswith(("head.", "fc_norm."))}
    out = {f"encoder.{k}": v for k, v in encoder.items()}
    out["encoder.norm.weight"], out["encoder.norm.bias"] = torch.ones(DIM), torch.zeros(DIM)
    out["mask_token"] = torch.zeros(1, 1, 24)
    out["encoder_to_decoder.weight"] = torch.randn(24, DIM)
    # The decoder's fixed table (the authors keep it out of the state dict; other code saves it as a buffer).
    out["pos_embed"] = sinusoid_table(32, 24).float()[None]
    out["decoder.blocks.0.attn.qkv.weight"] = torch.randn(72, 24)
    out["decoder.norm.weight"], out["decoder.head.weight"] = torch.ones(24), torch.randn(1536, 24)
    return out


def _checkpoint(kind: str, hf_model, tmp_path: Path) -> Path:
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    if kind == "transformers":
        hf_model.save_pretrained(tmp_path / "hf")
        return tmp_path / "hf"
    if kind == "transformers_bin":
        hf_model.save_pretrained(tmp_path / "hf_bin", safe_serialization=False)
        return tmp_path / "hf_bin"
    path = tmp_path / f"{kind}.pth"
    # As VideoMAE's scripts save them (utils.save_model): the weights, the optimizer's and scaler's states, the epoch
    # and the run's argparse.Namespace under "args".
    extras = {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}, "scaler": {"scale": 65536.0},
              "args": argparse.Namespace(model="vit_small_patch16_224", batch_size=8, lr=1e-3, mask_ratio=0.9)}
    if kind == "finetuned_model":
        torch.save({"model": _official_finetuned(state), "epoch": 3, **extras}, path)
    elif kind == "finetuned_module":
        torch.save({"module": _official_finetuned(state), "args": extras["args"]}, path)
    elif kind == "pretraining":
        torch.save({"model": _official_pretraining(state), "epoch": 800, **extras}, path)
    return path


# --- checkpoint layouts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["transformers", "transformers_bin", "finetuned_model", "finetuned_module",
                                  "pretraining"])
def test_every_layout_reproduces_transformers_videomae(kind: str, hf_model, tmp_path: Path) -> None:
    path = _checkpoint(kind, hf_model, tmp_path)
    torch.manual_seed(5)
    model = VideoViT(**SMALL, checkpoint=str(path)).eval()
    x = _clip()
    tokens_ref, pooled_ref = _reference(hf_model, x)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)

    torch.testing.assert_close(tokens, tokens_ref, atol=1e-4, rtol=0)
    report = model.load_report
    assert isinstance(report, LoadReport)
    assert report.unexpected == []
    # The head is never loaded: the targets differ.
    assert {"head.weight", "head.bias"} <= set(report.missing)
    assert not any(k.startswith("head.") for k in report.loaded)
    if kind == "pretraining":
        # Pretraining has no fc_norm (fresh, unit LayerNorm); its encoder norm and decoder are reported as ignored.
        assert set(report.missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
        torch.testing.assert_close(pooled, F.layer_norm(tokens_ref.mean(1), (DIM,), eps=1e-6), atol=1e-4, rtol=0)
        ignored = " ".join(report.ignored)
        for key in ("norm.weight", "mask_token", "encoder_to_decoder.weight", "decoder.norm.weight", "pos_embed"):
            assert key in ignored
    else:
        assert set(report.missing) == {"head.weight", "head.bias"}
        torch.testing.assert_close(pooled, pooled_ref, atol=1e-4, rtol=0)
        assert any("classifier" in k or k.startswith("head.") for k in report.ignored)
    assert len(report.loaded) == len(model.state_dict()) - len(report.missing)


def test_bare_safetensors_file_and_create_backbone(hf_model, tmp_path: Path) -> None:
    # transformers' in-memory names (query.bias, value.bias), where save_pretrained writes q_bias, v_bias.
    bare = tmp_path / "weights.safetensors"
    save_file({k: v.detach().contiguous() for k, v in hf_model.state_dict().items()}, str(bare))
    model = create_backbone("video_vit", **SMALL, checkpoint=str(bare)).eval()
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), _reference(hf_model, x)[0], atol=1e-4, rtol=0)
        assert model(x)["window"].shape == (2, 2)


def test_head_is_fresh_and_not_the_checkpoints(hf_model, tmp_path: Path) -> None:
    path = _checkpoint("finetuned_model", hf_model, tmp_path)
    model = VideoViT(**SMALL, checkpoint=path, out_dims=5)  # same head shape as the file's: still not loaded
    assert not torch.equal(model.head.weight, hf_model.classifier.weight)


def test_missing_and_unexpected_keys_are_reported_and_logged(hf_model, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    state = _official_finetuned({k: v.detach() for k, v in hf_model.state_dict().items()})
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.gamma_1"] = torch.ones(DIM)
    path = tmp_path / "odd.pth"
    torch.save({"model": state}, path)
    model = VideoViT(**SMALL)
    with caplog.at_level(logging.INFO):
        report = load_videomae_checkpoint(model, path)
    assert "blocks.1.mlp.fc2.bias" in report.missing
    assert report.unexpected == ["blocks.0.gamma_1"]
    line = report.summary()
    assert str(path) in line and "blocks.0.gamma_1" in line and "blocks.1.mlp.fc2.bias" in line
    assert "\n" not in line
    assert any("blocks.0.gamma_1" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_corrupt_file_is_a_config_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="broken.pth") as info:
        VideoViT(**SMALL, checkpoint=str(path))
    assert "save_pretrained" in str(info.value)  # the accepted layouts are named


def test_unknown_layouts_are_config_errors(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    (tmp_path / "empty_folder").mkdir()
    for path in (tmp_path / "list.pth", tmp_path / "empty_folder", tmp_path / "missing.pth"):
        with pytest.raises(ConfigError, match=path.name):
            read_state_dict(path)


def test_checkpoint_of_another_size_is_a_config_error(hf_model, tmp_path: Path) -> None:
    path = _checkpoint("finetuned_module", hf_model, tmp_path)
    with pytest.raises(ConfigError, match="another model size"):
        VideoViT(**{**SMALL, "embed_dim": 96}, checkpoint=path)


# --- frame counts and the position table --------------------------------------------------------------------------

@pytest.mark.parametrize("frames", SSTS_FRAME_COUNTS)
def test_every_ssts_frame_count_runs_forward_and_backward(frames: int) -> None:
    torch.manual_seed(0)
    model = create_backbone("video_vit_tiny", n_bins=3).train()
    x = _clip(t=frames)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, math.ceil(frames / 2) * (SIZE // PATCH) ** 2, DIM)
    out = model(x)
    assert out["window"].shape == (2, 2) and out["logits"].shape == (2, 2, 3)
    (out["window"].pow(2).mean() + out["logits"].pow(2).mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_odd_frame_count_repeats_the_last_frame() -> None:
    model = create_backbone("video_vit_tiny").eval()
    x = _clip(t=3)
    padded = torch.cat([x, x[:, -1:]], dim=1)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), model.forward_features(padded))


def _numpy_style_table(n: int, dim: int) -> torch.Tensor:
    rows = [[p / 10000 ** (2 * (j // 2) / dim) for j in range(dim)] for p in range(n)]
    table = torch.tensor(rows, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = table[:, 0::2].sin(), table[:, 1::2].cos()
    return table.float()


def test_position_table_is_rebuilt_for_another_resolution_and_frame_count(hf_model) -> None:
    model = VideoViT(**SMALL).eval()
    assert not any("pos" in k for k in model.state_dict())  # never a checkpoint tensor
    n = 3 * (48 // PATCH) ** 2  # 6 frames, 48x48
    table = model.position_table(n)
    assert table.shape == (1, n, DIM)
    torch.testing.assert_close(table[0], _numpy_style_table(n, DIM))
    assert model.position_table(n) is table  # cached per token count

    # Same weights in a transformers model built for 6 frames at 48x48: identical tokens.
    other = transformers.VideoMAEModel(_hf_config(image_size=48, num_frames=6)).eval()
    other.load_state_dict({k.removeprefix("videomae."): v for k, v in hf_model.state_dict().items()
                           if k.startswith("videomae.")})
    official = _official_finetuned({k: v.detach() for k, v in hf_model.state_dict().items()})
    model.load_state_dict({k: v for k, v in official.items() if not k.startswith("head.")}, strict=False)
    x = _clip(t=6, size=48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), other(x).last_hidden_state, atol=1e-4, rtol=0)


def test_frame_size_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_backbone("video_vit_tiny")(_clip(size=36))


# --- layer decay, arguments ---------------------------------------------------------------------------------------

def test_layer_decay_groups_scale_by_depth_and_skip_decay_on_1d() -> None:
    model = create_backbone("video_vit_tiny", n_bins=4)
    lr, wd, decay = 1e-3, 0.05, 0.5
    groups = layer_decay_groups(model, lr=lr, weight_decay=wd, layer_decay=decay)
    by_name = {name: g for g in groups for name in g["param_names"]}
    # Every trainable parameter in exactly one group.
    assert sorted(by_name) == sorted(n for n, _ in model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    expected_layer = {"patch_embed.proj.weight": 0, "blocks.0.attn.qkv.weight": 1, "blocks.1.mlp.fc1.weight": 2,
                      "head.weight": 3, "cls_head.weight": 3, "fc_norm.weight": 3}
    for name, layer in expected_layer.items():
        assert by_name[name]["layer_id"] == layer
        assert by_name[name]["lr"] == pytest.approx(lr * decay ** (DEPTH + 1 - layer))
    for name, group in by_name.items():
        no_decay = name.endswith(".bias") or "norm" in name or name.endswith(("q_bias", "v_bias"))
        assert group["weight_decay"] == (0.0 if no_decay else wd), name
    assert by_name["blocks.0.attn.q_bias"]["weight_decay"] == 0.0

    assert groups[0]["lr"] == lr  # the head's group first: the base learning rate
    optimizer = torch.optim.AdamW(groups)
    model(_clip())["window"].sum().backward()
    optimizer.step()


def test_layer_decay_one_is_a_single_learning_rate() -> None:
    groups = layer_decay_groups(create_backbone("video_vit_tiny"), lr=2e-4, weight_decay=0.05, layer_decay=1.0)
    assert {g["lr"] for g in groups} == {2e-4}


def _videomae_reference(model: torch.nn.Module, lr: float, wd: float, decay: float, depth_of) -> dict:
    """VideoMAE's fine-tuning rule, per trainable parameter: (lr, weight decay, layer), from the name alone."""
    top = model.depth + 1
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            layer = depth_of(name, top)
            no_decay = param.ndim == 1 or name.endswith(".bias")
            out[name] = (lr * decay ** (top - layer), 0.0 if no_decay else wd, layer)
    return out


def _vit_depth(name: str, top: int) -> int:
    if name.startswith("patch_embed."):
        return 0
    return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else top


def _tpsbt_depth(name: str, top: int) -> int:
    # tpsbt_tiny: stage depths (1, 2, 2); stage k's downsampling goes with the stage's first block (blocks 1 and 3)
    first_block = {"0": 2, "1": 4}
    parts = name.split(".")
    if parts[0] == "patch_embed":
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return first_block[parts[1]] if parts[0].endswith("_downsamples") else top


@pytest.mark.parametrize("backbone, depth_of", [("video_vit_tiny", _vit_depth), ("tpsbt_tiny", _tpsbt_depth)])
@pytest.mark.parametrize("wd", [0.05, 0.0])
def test_layer_decay_groups_follow_videomae_rule(backbone, depth_of, wd) -> None:
    """Every parameter's learning rate and weight decay as VideoMAE's fine-tuning assigns them, with a frozen regression
    head left out, and the same group order (head first, no-decay before decay) whatever the weight decay."""
    model = create_backbone(backbone, n_bins=4) if backbone == "video_vit_tiny" else create_backbone(backbone)
    model.head.requires_grad_(False)
    lr, decay = 1e-3, 0.5
    expected = _videomae_reference(model, lr, wd, decay, depth_of)
    groups = layer_decay_groups(model, lr=lr, weight_decay=wd, layer_decay=decay)
    got = {name: (g["lr"], g["weight_decay"], g["layer_id"]) for g in groups for name in g["param_names"]}
    assert got.keys() == expected.keys()
    for name, (g_lr, g_wd, g_layer) in got.items():
        e_lr, e_wd, e_layer = expected[name]
        assert (g_layer, g_wd) == (e_layer, e_wd), name
        assert g_lr == pytest.approx(e_lr, rel=1e-12), name
    params = dict(model.named_parameters())
    for group in groups:
        assert group["lr_scale"] == pytest.approx(group["lr"] / lr, rel=1e-12)
        assert all(p is params[n] for p, n in zip(group["params"], group["param_names"], strict=True))
    # Order: layers from the head down, and within a layer the no-decay group (1-D parameters) first.
    order = [(g["layer_id"], all(params[n].ndim > 1 for n in g["param_names"])) for g in groups]
    assert order == sorted(order, key=lambda k: (-k[0], k[1]))
    assert groups[0]["layer_id"] == model.depth + 1 and groups[0]["lr"] == lr
    assert "head.weight" not in got and "fc_norm.weight" in got


def test_trial_settable_arguments() -> None:
    settable = {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet_size", "img_size",
                "num_frames", "drop_path", "drop", "checkpoint"}
    assert backbone_arguments("video_vit") == settable
    assert backbone_arguments("video_vit_tiny") == settable - {"embed_dim", "depth", "num_heads", "patch_size",
                                                               "img_size"}


def test_default_is_vit_small() -> None:
    model = VideoViT(depth=1)  # ViT-S width, one block, to stay fast
    assert model.patch_embed.proj.weight.shape == (384, 3, 2, 16, 16)
    assert model.blocks[0].attn.num_heads == 6
    assert model.blocks[0].mlp.fc1.out_features == 4 * 384
    assert model.position_table(8 * 14 * 14).shape == (1, 1568, 384)


def test_dropout_and_drop_path_act_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_backbone("video_vit_tiny", drop=0.2, drop_path=0.3)
    assert model.blocks[0].drop_path.__class__.__name__ == "Identity"  # rate rises linearly from 0
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    x = _clip()
    model.train()
    assert not torch.equal(model(x)["window"], model(x)["window"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["window"], model(x)["window"])
