"""Tests for the 3D backbones (``i3d``, ``conv3d_resnet_gru`` and their tiny variants) and checkpoint loading."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from trainables.errors import ConfigError
from trainables.models import create_backbone, list_backbones
from trainables.models.inflate import masked_convs
from trainables.models.pretrained import LoadReport, load_checkpoint_into, match_state_dict, read_state_dict

B, T, H, W = 2, 4, 32, 32
TINY = ("i3d_tiny", "conv3d_resnet_gru_tiny")


def _clip(c: int, seed: int = 0, t: int = T) -> torch.Tensor:
    return torch.randn(B, t, c, H, W, generator=torch.Generator().manual_seed(seed))


def _build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name, **kwargs)


def _channels(name: str) -> int:
    return 1 if name.startswith("conv3d") else 3


def test_families_and_tiny_variants_are_registered() -> None:
    assert {"i3d", "i3d_tiny", "conv3d_resnet_gru", "conv3d_resnet_gru_tiny"} <= set(list_backbones())


# --- shapes, gradients, determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("n_bins", [0, 5])
def test_output_shapes_backward_and_finiteness(name: str, n_bins: int) -> None:
    model = _build(name, n_bins=n_bins, out_dims=3).train()
    out = model(_clip(_channels(name)))
    assert out["window"].shape == (B, 3)
    assert out["frames"].shape == (B, T, 3)
    if n_bins:
        assert out["logits"].shape == (B, 3, n_bins)
        assert out["frame_logits"].shape == (B, T, 3, n_bins)
    else:
        assert "logits" not in out and "frame_logits" not in out
    for value in out.values():
        assert torch.isfinite(value).all()
    sum(v.pow(2).mean() for v in out.values()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_model_and_output(name: str) -> None:
    a, b, c = _build(name, seed=11).eval(), _build(name, seed=11).eval(), _build(name, seed=12).eval()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    x = _clip(_channels(name))
    with torch.no_grad():
        out_a, out_b, out_c = a(x), b(x), c(x)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    assert not torch.equal(out_a["window"], out_c["window"])


# --- i3d ------------------------------------------------------------------------------------------------------------

def test_i3d_window_is_the_head_of_the_global_pool() -> None:
    # With a linear head the window prediction is the mean of the frame predictions (pooling commutes with it).
    model = _build("i3d_tiny", head_hidden=0).eval()
    with torch.no_grad():
        out = model(_clip(3))
    torch.testing.assert_close(out["window"], out["frames"].mean(dim=1), rtol=1e-5, atol=1e-6)


def test_i3d_forwards_the_inflation_settings() -> None:
    model = _build("i3d_tiny", masking=True, dilation=[1, 2, 4, 8], mode="copied", time_kernel=5)
    assert masked_convs(model.encoder)
    assert model.encoder.inflation == dict(time_kernel=5, mode="copied", surround="zero", surround_std=0.1,
                                           dilation=[1, 2, 4, 8], masking=True, time_padding="zeros")
    assert model.encoder.layer4[0].conv1.dilation[0] == 8
    assert model.encoder.layer4[0].conv1.kernel_size[0] == 5
    out = model(_clip(3, t=6))
    assert out["frames"].shape == (B, 6, 2)


def test_i3d_frames_are_per_frame_on_a_zero_surround_net() -> None:
    # centered + zero surround: each frame's prediction depends on that frame only (the 2D net applied per frame).
    model = _build("i3d_tiny").eval()
    x = _clip(3)
    changed = x.clone()
    changed[:, -1] = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before, after = model(x)["frames"], model(changed)["frames"]
    torch.testing.assert_close(after[:, :-1], before[:, :-1])
    assert not torch.allclose(after[:, -1], before[:, -1])


def test_i3d_from_vgg_drops_fc6_fc7_and_runs() -> None:
    model = _build("i3d", cnn="vgg11_bn", head_hidden=16, cnn_kwargs={"mlp_ratio": 1 / 16})
    assert isinstance(model.encoder.pre_logits, nn.Identity)
    out = model(torch.randn(1, 2, 3, 32, 32))
    assert out["frames"].shape == (1, 2, 2)
    out["window"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_i3d_loads_a_2d_checkpoint_before_inflating(tmp_path: Path) -> None:
    torch.manual_seed(5)
    cnn2d = timm.create_model("test_resnet", pretrained=False)  # with its 1000-class fc, as a real 2D checkpoint is
    path = tmp_path / "resnet2d.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in cnn2d.state_dict().items()}}, path)

    model = _build("i3d_tiny", pretrained=str(path))
    report = model.load_reports["pretrained"]
    conv3d = model.encoder.layer1[0].conv1
    assert torch.equal(conv3d.weight[:, :, 1], cnn2d.layer1[0].conv1.weight)
    assert not conv3d.weight[:, :, [0, 2]].any()
    assert torch.equal(model.encoder.bn1.running_var, cnn2d.bn1.running_var)
    assert sorted(report.unexpected) == ["module.fc.bias", "module.fc.weight"]
    assert not report.missing and not report.mismatched


def test_i3d_loads_its_own_3d_checkpoint(tmp_path: Path) -> None:
    source = _build("i3d_tiny", seed=3).eval()
    path = tmp_path / "i3d.pt"
    torch.save({"model": source.state_dict()}, path)
    model = _build("i3d_tiny", seed=4, pretrained=path).eval()
    assert model.load_reports["pretrained"].ok
    x = _clip(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["frames"], source(x)["frames"])


# --- conv3d_resnet_gru ----------------------------------------------------------------------------------------------

def test_conv3d_default_is_grayscale_resnet18_stem_and_trunk() -> None:
    model = create_backbone("conv3d_resnet_gru")
    conv = model.encoder.stem.conv
    assert (conv.in_channels, conv.out_channels) == (1, 64)
    assert conv.kernel_size == (5, 7, 7) and conv.stride == (1, 2, 2) and conv.padding == (2, 3, 3)
    assert model.encoder.stem.pool.kernel_size == (1, 3, 3)
    trunk = model.encoder.trunk
    assert [len(getattr(trunk, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert trunk.num_features == 512
    # ResNet-18 without its stem (conv1/bn1/fc): 11.18M - 9.4k - 0.5M parameters.
    resnet18 = timm.create_model("resnet18", pretrained=False, num_classes=0)
    trunk_params = sum(p.numel() for n, p in resnet18.named_parameters() if n.startswith("layer"))
    assert sum(p.numel() for p in trunk.parameters()) == trunk_params


def test_conv3d_window_is_the_mean_of_frames() -> None:
    model = _build("conv3d_resnet_gru_tiny").eval()
    with torch.no_grad():
        out = model(_clip(1))
    torch.testing.assert_close(out["window"], out["frames"].mean(dim=1))


def test_conv3d_rgb_clips_are_converted_to_luma() -> None:
    model = _build("conv3d_resnet_gru_tiny").eval()
    rgb = _clip(3)
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb)["frames"], model(gray)["frames"])
    with pytest.raises(ValueError, match="in_chans=1 got clips with 2 channels"):
        model(_clip(2))
    rgb_model = _build("conv3d_resnet_gru_tiny", in_chans=3)
    assert rgb_model.encoder.stem.conv.in_channels == 3
    assert rgb_model(rgb)["frames"].shape == (B, T, 2)


@pytest.mark.parametrize("freeze, frozen_prefixes", [
    ("none", ()),
    ("first_layer", ("encoder.stem.conv.",)),
    ("stem_trunk", ("encoder.",)),
])
def test_conv3d_freeze_policies_freeze_exactly_their_parameters(freeze: str, frozen_prefixes: tuple[str, ...]) -> None:
    model = _build("conv3d_resnet_gru_tiny", freeze=freeze).train()
    names = [n for n, _ in model.named_parameters()]
    expected_frozen = {n for n in names if n.startswith(frozen_prefixes)} if frozen_prefixes else set()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected_frozen
    if freeze == "first_layer":
        assert frozen == {"encoder.stem.conv.weight"}
    assert any(p.requires_grad for p in model.parameters())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats_before = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    model(_clip(1)).get("window").pow(2).mean().backward()
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n in expected_frozen), n
    if freeze == "stem_trunk":
        # A frozen encoder keeps its BatchNorm layers in eval mode: running statistics do not move.
        assert all(not m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d))
        for n, b in model.named_buffers():
            if n.startswith("encoder."):
                assert torch.equal(b, stats_before[n]), n
        assert model.gru.training


def test_conv3d_rejects_an_unknown_freeze_policy() -> None:
    with pytest.raises(ValueError, match="freeze must be one of none, first_layer, stem_trunk, got 'all'"):
        create_backbone("conv3d_resnet_gru_tiny", freeze="all")


def test_conv3d_pretext_checkpoint_initialises_the_encoder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pretext = _build("conv3d_resnet_gru_tiny", seed=21)
    encoder_state = pretext.encoder.state_dict()
    state = {f"encoder.{k}": v for k, v in encoder_state.items()}
    state["encoder.projector.weight"] = torch.zeros(8, 48)  # a pretext-only layer the downstream model lacks
    path = tmp_path / "pretext.ckpt"
    torch.save({"model": state, "epoch": 30}, path)

    with caplog.at_level(logging.INFO, logger="trainables.models.pretrained"):
        model = _build("conv3d_resnet_gru_tiny", seed=22, pretext_checkpoint=str(path), freeze="first_layer")
    report = model.load_reports["pretext"]
    assert isinstance(report, LoadReport)
    assert len(report.loaded) == len(encoder_state)
    assert report.unexpected == ["encoder.projector.weight"]
    assert not report.missing and not report.mismatched
    assert report.mapping["encoder.stem.conv.weight"] == "stem.conv.weight"
    for key, value in encoder_state.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    # The GRU and heads keep their own initialisation.
    assert not torch.equal(model.head.weight, pretext.head.weight)
    assert not model.encoder.stem.conv.weight.requires_grad
    assert f"loaded {len(encoder_state)}" in caplog.text and "encoder.projector.weight" in caplog.text


def test_conv3d_pretrained_checkpoint_reproduces_the_model(tmp_path: Path) -> None:
    source = _build("conv3d_resnet_gru_tiny", seed=31).eval()
    path = tmp_path / "model.pt"
    torch.save({"module": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = _build("conv3d_resnet_gru_tiny", seed=32, pretrained=path).eval()
    assert model.load_reports["pretrained"].ok
    x = _clip(1)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["frames"], source(x)["frames"])


# --- load_checkpoint_into -------------------------------------------------------------------------------------------

def test_matching_reports_every_key_and_loading_refuses_a_shape_mismatch(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {"backbone.0.weight": torch.ones(3, 4), "backbone.0.bias": torch.ones(5), "extra": torch.ones(1)}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    plan, report = match_state_dict(model, read_state_dict(path), path=path)
    assert report.loaded == ["0.weight"] and list(plan) == ["0.weight"]
    assert report.mismatched == ["0.bias"]
    assert report.shapes["0.bias"] == ((5,), (3,))
    assert report.unexpected == ["extra"]
    assert report.missing == ["1.weight", "1.bias"]
    assert report.mapping == {"backbone.0.weight": "0.weight"}
    assert not report.ok and "shape-mismatched 1" in report.summary()

    before = model[0].weight.detach().clone()
    with pytest.raises(ConfigError, match=r"partial.pt does not fit Sequential .*0.bias file \[5\] vs model \[3\]"):
        load_checkpoint_into(model, path)
    assert torch.equal(model[0].weight, before)  # a refused load leaves the model untouched

    del state["backbone.0.bias"]
    torch.save(state, path)
    report = load_checkpoint_into(model, path)
    assert torch.equal(model[0].weight, torch.ones(3, 4)) and report.missing == ["0.bias", "1.weight", "1.bias"]
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = fresh[0].weight.detach().clone()
    with pytest.raises(ConfigError, match="strict checkpoint load failed"):
        load_checkpoint_into(fresh, path, strict=True)
    assert torch.equal(fresh[0].weight, before)  # strict failure leaves the model untouched


def test_exact_key_wins_over_a_stripped_one(tmp_path: Path) -> None:
    model = nn.Sequential()
    model.add_module("encoder", nn.Linear(2, 2))
    path = tmp_path / "both.pt"
    torch.save({"encoder.weight": torch.ones(2, 2), "module.encoder.weight": torch.zeros(2, 2)}, path)
    report = load_checkpoint_into(model, path)
    assert torch.equal(model.encoder.weight, torch.ones(2, 2))
    assert report.unexpected == ["module.encoder.weight"]


def test_missing_file_and_non_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match="not found: .*nope.pt"):
        load_checkpoint_into(model, missing)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.txt"):
        load_checkpoint_into(model, garbage)
    no_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, no_tensors)
    with pytest.raises(ValueError, match="meta.pt.*no state dict"):
        read_state_dict(no_tensors)
    with pytest.raises(ValueError, match="local checkpoint"):
        create_backbone("conv3d_resnet_gru_tiny", pretrained=True)
    with pytest.raises(ConfigError, match="absent.pth"):
        create_backbone("i3d_tiny", pretrained=str(tmp_path / "absent.pth"))


def test_safetensors_checkpoints_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = nn.Linear(3, 2)
    assert load_checkpoint_into(model, path).ok
    assert torch.equal(model.weight, source.weight)
