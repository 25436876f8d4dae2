"""Tests for trainables.models: the backbone registry and the 2D-CNN-RNN family."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainables.models import create_backbone, list_backbones, register_backbone
from trainables.models import registry

# Per-backbone settings that keep a forward/backward pass on CPU well under a second. Backbones not listed here are
# built with their defaults (a new family should register a tiny variant or get an entry here).
TINY: dict[str, dict] = {
    "cnn_rnn": {"cnn": "test_convnext", "hidden": 16},
    "cnn_rnn_tiny": {},
    "video_vit": {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8, "img_size": 32},
    "tpsbt": {"embed_dim": 48, "depths": (1, 1, 1), "num_heads": 3, "patch_size": 8, "img_size": 32},
    "tpsbt_base": {"patch_size": 8, "img_size": 32},
    "mimamo": {"cnn": "test_resnet", "temporal_channels": 8, "feature_dim": 32, "hidden": 32},
}
# Backbones with a time axis, which must return "frames".
TEMPORAL = {"cnn_rnn", "cnn_rnn_tiny", "mimamo", "mimamo_tiny"}
B, T, C, H, W = 2, 4, 3, 32, 32


def _clip(c: int = C, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, c, H, W, generator=gen)


def _build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name, **{**TINY.get(name, {}), **kwargs})


# --- registry -------------------------------------------------------------------------------------------------------

def test_both_cnn_rnn_variants_are_registered() -> None:
    names = list_backbones()
    assert {"cnn_rnn", "cnn_rnn_tiny"} <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_message_lists_every_registered_name() -> None:
    with pytest.raises(ValueError) as info:
        create_backbone("no_such_backbone")
    message = str(info.value)
    assert "no_such_backbone" in message
    for name in list_backbones():
        assert name in message


def test_registering_an_existing_name_raises_and_keeps_the_original() -> None:
    original = registry._BACKBONES.get("cnn_rnn")

    with pytest.raises(ValueError, match="'cnn_rnn' is already registered"):
        @register_backbone("cnn_rnn")
        def impostor(**kwargs) -> nn.Module:  # pragma: no cover - never registered
            return nn.Identity()

    assert registry._BACKBONES.get("cnn_rnn") is original


def test_registering_a_new_name_twice_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry._BACKBONES, "entries", dict(registry._BACKBONES.entries))

    @register_backbone("unit_test_identity")
    def first(**kwargs) -> nn.Module:
        return nn.Identity()

    assert "unit_test_identity" in list_backbones()
    assert isinstance(create_backbone("unit_test_identity"), nn.Identity)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("unit_test_identity")(first)
    assert registry._BACKBONES.get("unit_test_identity") is first


# --- contract every backbone must meet ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_backbones())
def test_backbone_contract_shapes_and_gradients(name: str) -> None:
    model = _build(name)
    model.train()
    out = model(_clip())

    assert isinstance(out, dict)
    assert out["window"].shape == (B, 2)
    if name in TEMPORAL:
        assert "frames" in out
    if "frames" in out:
        assert out["frames"].shape == (B, T, 2)
    for value in out.values():
        assert torch.isfinite(value).all()

    loss = sum(v.pow(2).mean() for v in out.values())
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for pname, param in trainable:
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"
    # At least the output layer must actually receive signal.
    assert any(param.grad.abs().sum() > 0 for _, param in trainable)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_same_seed_same_output(name: str) -> None:
    a, b = _build(name, seed=123), _build(name, seed=123)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    a.eval(), b.eval()
    x = _clip()
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key

    c = _build(name, seed=124).eval()
    with torch.no_grad():
        assert not torch.equal(c(x)["window"], out_a["window"])


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_eval_mode_is_deterministic(name: str) -> None:
    model = _build(name, dropout=0.5).eval() if name in TEMPORAL else _build(name).eval()
    x = _clip()
    with torch.no_grad():
        first, second = model(x), model(x)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# --- cnn_rnn specifics ----------------------------------------------------------------------------------------------

def test_cnn_rnn_window_is_last_frame_and_rnn_is_causal() -> None:
    model = _build("cnn_rnn").eval()
    x = _clip()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out["window"], out["frames"][:, -1])

        later = x.clone()
        later[:, -1] = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(7))
        out_later = model(later)
        # Earlier frames cannot see a change to the last frame ...
        assert torch.equal(out_later["frames"][:, :-1], out["frames"][:, :-1])
        assert not torch.allclose(out_later["frames"][:, -1], out["frames"][:, -1])

        earlier = x.clone()
        earlier[:, 0] = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(8))
        # ... but the window output has seen the whole clip, including its first frame.
        assert not torch.allclose(model(earlier)["window"], out["window"])


def test_cnn_rnn_batch_items_are_independent() -> None:
    model = _build("cnn_rnn").eval()
    x = _clip()
    with torch.no_grad():
        full = model(x)["frames"]
        single = model(x[1:2])["frames"]
    torch.testing.assert_close(single[0], full[1], rtol=1e-5, atol=1e-6)


def test_cnn_rnn_tiny_defaults() -> None:
    model = create_backbone("cnn_rnn_tiny")
    assert isinstance(model.rnn, nn.GRU)
    assert model.rnn.hidden_size == 64
    assert model.rnn.num_layers == 1
    assert model.encoder.default_cfg["architecture"] == "test_convnext"
    # Explicit settings still win over the tiny defaults.
    assert create_backbone("cnn_rnn_tiny", hidden=16).rnn.hidden_size == 16


def test_cnn_rnn_lstm() -> None:
    model = _build("cnn_rnn", rnn="lstm")
    assert isinstance(model.rnn, nn.LSTM)
    assert model.rnn.hidden_size == 16
    out = model(_clip())
    assert out["window"].shape == (B, 2)
    assert out["frames"].shape == (B, T, 2)
    out["window"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


@pytest.mark.parametrize("name", ["cnn_rnn", "cnn_rnn_tiny"])
def test_cnn_rnn_rejects_unknown_rnn(name: str) -> None:
    with pytest.raises(ValueError, match=r"rnn must be 'gru' or 'lstm', got 'bad'"):
        _build(name, rnn="bad")


def test_cnn_rnn_grayscale_input() -> None:
    model = _build("cnn_rnn", in_chans=1).eval()
    with torch.no_grad():
        out = model(_clip(c=1))
    assert out["window"].shape == (B, 2)
    assert out["frames"].shape == (B, T, 2)
    assert torch.isfinite(out["frames"]).all()
    # A 1-channel model does not accept RGB clips.
    with pytest.raises(RuntimeError):
        model(_clip(c=3))


def test_cnn_rnn_out_dims() -> None:
    model = _build("cnn_rnn", out_dims=3).eval()
    with torch.no_grad():
        out = model(_clip())
    assert out["window"].shape == (B, 3)
    assert out["frames"].shape == (B, T, 3)


@pytest.mark.parametrize(("layers", "dropout", "expected"), [(1, 0.5, 0.0), (2, 0.25, 0.25)])
def test_cnn_rnn_dropout_between_layers_only_when_stacked(layers: int, dropout: float, expected: float) -> None:
    model = _build("cnn_rnn", layers=layers, dropout=dropout)
    assert model.rnn.num_layers == layers
    assert model.rnn.dropout == expected
    assert model.head[0].p == dropout
