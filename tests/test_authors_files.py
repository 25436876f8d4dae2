"""The authors' own checkpoint files start a trial: files written the way VideoMAE's and SVFAP's ``utils.save_model``
writes them (the weights under ``model``, or ``module`` for DeepSpeed, beside the optimizer's and the loss scaler's
states, the epoch and the run's ``argparse.Namespace`` under ``args``) load through a trial's own path (the
``checkpoint`` setting -> ``build_model``) and the weights arrive unchanged. A position table in a file is ignored
only when it is the fixed sinusoid; a learned one is refused with the file, the key and the reason; a file pickling any
class but the ``args`` namespace is refused naming that class."""
from __future__ import annotations

import argparse
import pathlib
from pathlib import Path

import pytest
import torch

from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.loop import build_model
from trainables.models import create_backbone
from trainables.models.positions import sinusoid_table

DIM = 48  # both tiny variants
# Tokens of the tiny variants' default clip: 16 frames / tubelet 2 = 8 slices of (32 / 8) ** 2 = 16 patches.
TOKENS = 8 * 16
HEADS = ("head.", "cls_head.", "fc_norm.")

VIDEOMAE_ARGS = argparse.Namespace(model="pretrain_videomae_small_patch16_224", mask_type="tube", mask_ratio=0.9,
                                   input_size=224, window_size=(8, 14, 14), num_frames=16, sampling_rate=4,
                                   lr=1.5e-4, opt_betas=[0.9, 0.95], output_dir="output/videomae", finetune="")
SVFAP_ARGS = argparse.Namespace(model="pretrain_svfap_base_patch16_160", mask_ratio=0.9, input_size=160,
                                depth=[12, 6, 3], num_bottleneck_tokens=[8], lr=1.5e-4, epochs=100,
                                output_dir="saved/svfap", model_key="model|module")


def _save_model(path: Path, weights: dict[str, torch.Tensor], args: argparse.Namespace, key: str = "model") -> Path:
    """A file as the authors' ``utils.save_model`` writes it: a real AdamW state after one step, the native AMP scaler's
    state, the epoch and ``args``; ``key="module"`` is the DeepSpeed engine's layout."""
    params = [torch.nn.Parameter(v.detach().clone()) for v in list(weights.values())[:3]]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    torch.save({key: weights, "optimizer": optimizer.state_dict(), "epoch": 799,
                "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}, path)
    return path


def _source(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    """A tiny model's weights with a 400-class head (another task's targets, as the authors' Kinetics models)."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in create_backbone(backbone, out_dims=400).state_dict().items()}


def _pretraining(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' pretraining model: the encoder under ``encoder.`` with its final norm, then the decoder."""
    out = {f"encoder.{k}": v for k, v in state.items() if not k.startswith(HEADS)}
    out["encoder.norm.weight"], out["encoder.norm.bias"] = torch.ones(DIM), torch.zeros(DIM)
    out["decoder.blocks.0.attn.qkv.weight"] = torch.randn(96, 32)
    out["decoder.norm.weight"], out["decoder.head.weight"] = torch.ones(32), torch.randn(3 * 2 * 8 * 8, 32)
    out["encoder_to_decoder.weight"] = torch.randn(32, DIM)
    out["mask_token"] = torch.randn(1, 1, 32)
    return out


def _trial_model(backbone: str, path: Path) -> torch.nn.Module:
    """The model a trial builds from the ``checkpoint`` setting."""
    return build_model(TrialConfig.from_dict({"backbone": backbone, "checkpoint": str(path)}), out_dims=2)


def _assert_encoder_arrived(model: torch.nn.Module, source: dict[str, torch.Tensor], keys: set[str]) -> None:
    own = model.state_dict()
    for key in keys:
        assert torch.equal(own[key], source[key]), key
    assert set(model.load_report.loaded) == keys
    assert {"head.weight", "head.bias"} <= set(model.load_report.missing)  # a fresh head for our two targets


def _assert_same_features(model: torch.nn.Module, backbone: str, source: dict[str, torch.Tensor]) -> None:
    """The loaded encoder computes what the source model computes, to the bit."""
    reference = create_backbone(backbone, out_dims=400)
    reference.load_state_dict(source)
    x = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), reference.eval().forward_features(x), rtol=0,
                                   atol=0)


@pytest.mark.parametrize("layout", ["pretraining", "finetuned", "deepspeed", "backbone_prefix"])
def test_videomae_files_start_a_trial(tmp_path: Path, layout: str) -> None:
    source = _source("video_vit_tiny", seed=1)
    encoder = {k for k in source if not k.startswith(HEADS)}
    weights = {"pretraining": _pretraining(source), "finetuned": source, "deepspeed": source,
               "backbone_prefix": {f"backbone.{k}": v for k, v in source.items()}}[layout]
    path = _save_model(tmp_path / f"checkpoint-{layout}.pth", weights, VIDEOMAE_ARGS,
                       key="module" if layout == "deepspeed" else "model")

    model = _trial_model("video_vit_tiny", path)
    report = model.load_report
    assert report.unexpected == [] and report.mismatched == []
    if layout == "pretraining":
        _assert_encoder_arrived(model, source, encoder)
        assert set(report.missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
        assert {"encoder.norm.weight", "decoder.head.weight", "encoder_to_decoder.weight", "mask_token"} \
            <= set(report.ignored)
    else:
        _assert_encoder_arrived(model, source, encoder | {"fc_norm.weight", "fc_norm.bias"})
        assert set(report.missing) == {"head.weight", "head.bias"}
        prefix = "backbone." if layout == "backbone_prefix" else ""
        assert set(report.ignored) == {f"{prefix}head.weight", f"{prefix}head.bias"}  # 400 classes, not ours
        assert report.mapping[f"{prefix}blocks.1.attn.qkv.weight"] == "blocks.1.attn.qkv.weight"
    _assert_same_features(model, "video_vit_tiny", source)


@pytest.mark.parametrize("layout", ["pretraining", "finetuned"])
def test_svfap_files_start_a_trial(tmp_path: Path, layout: str) -> None:
    source = _source("tpsbt_tiny", seed=2)
    encoder = {k for k in source if not k.startswith(HEADS)}
    weights = _pretraining(source) if layout == "pretraining" else source
    path = _save_model(tmp_path / f"svfap-{layout}.pth", weights, SVFAP_ARGS)

    model = _trial_model("tpsbt_tiny", path)
    report = model.load_report
    assert report.mismatched == []
    if layout == "pretraining":
        _assert_encoder_arrived(model, source, encoder)
        # The norm before the decoder has no place in the fine-tuning model: reported, as the authors' script does.
        assert report.unexpected == ["encoder.norm.weight", "encoder.norm.bias"]
        assert {"decoder.blocks.0.attn.qkv.weight", "encoder_to_decoder.weight", "mask_token"} <= set(report.ignored)
    else:
        _assert_encoder_arrived(model, source, encoder | {"fc_norm.weight", "fc_norm.bias"})
        assert report.unexpected == [] and set(report.ignored) == {"head.weight", "head.bias"}
    _assert_same_features(model, "tpsbt_tiny", source)


@pytest.mark.parametrize("backbone", ["video_vit_tiny", "tpsbt_tiny"])
def test_a_learned_position_table_is_refused_with_the_file_the_key_and_why(tmp_path: Path, backbone: str) -> None:
    weights = _pretraining(_source(backbone, seed=3))
    torch.manual_seed(4)
    # The authors' use_learnable_pos_emb=True: a trained table with one more row than patches.
    weights["encoder.pos_embed"] = 0.02 * torch.randn(1, TOKENS + 1, DIM)
    path = _save_model(tmp_path / "learned-pos.pth", weights, VIDEOMAE_ARGS)
    with pytest.raises(ConfigError) as err:
        _trial_model(backbone, path)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path}: encoder.pos_embed (shape [1, {TOKENS + 1}, {DIM}])" in message
    assert f"not the fixed sine-cosine position table for its {TOKENS + 1} positions of width {DIM}" in message
    assert "a learned table" in message and "Refused" in message


@pytest.mark.parametrize("backbone", ["video_vit_tiny", "tpsbt_tiny"])
@pytest.mark.parametrize("tokens, noise, loads", [
    (TOKENS, 0.0, True),  # the table of the model's own clip
    (2 * TOKENS, 0.0, True),  # a longer clip's: the model rebuilds its table from the flat index all the same
    (TOKENS, 5e-6, True),  # within the 1e-5 tolerance (float32 rounding of a saved float64 table)
    (TOKENS, 1e-3, False),  # fine-tuned away from the sinusoid: no longer the fixed table
])
def test_a_sinusoid_position_table_is_ignored(tmp_path: Path, backbone: str, tokens: int, noise: float,
                                              loads: bool) -> None:
    source = _source(backbone, seed=5)
    weights = _pretraining(source)
    table = sinusoid_table(tokens, DIM)
    table[0, 0] += noise  # the largest difference is exactly `noise`
    weights["encoder.pos_embed"] = table.float()[None] if noise < 1e-5 else table[None]
    path = _save_model(tmp_path / "sinusoid-pos.pth", weights, SVFAP_ARGS)
    if not loads:
        with pytest.raises(ConfigError, match=r"encoder.pos_embed .*largest difference 0.001 > 1e-05"):
            _trial_model(backbone, path)
        return
    model = _trial_model(backbone, path)
    assert model.load_report.ignored["encoder.pos_embed"] == (
        f"fixed sinusoid position table ({tokens} positions, width {DIM}), rebuilt by the model for each input")
    assert torch.equal(model.state_dict()["blocks.0.mlp.fc1.weight"], source["blocks.0.mlp.fc1.weight"])


@pytest.mark.parametrize("backbone", ["video_vit_tiny", "tpsbt_tiny"])
def test_a_file_pickling_another_class_is_refused_naming_it(tmp_path: Path, backbone: str) -> None:
    # A run whose args hold a Path object: the file pickles pathlib's class beside the Namespace.
    args = argparse.Namespace(**{**vars(SVFAP_ARGS), "output_dir": pathlib.PurePosixPath("saved/svfap")})
    path = _save_model(tmp_path / "with-path.pth", _source(backbone, seed=6), args)
    with pytest.raises(ConfigError) as err:
        _trial_model(backbone, path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "pathlib.PurePosixPath" in message
    assert "refused" in message and "argparse" not in message
