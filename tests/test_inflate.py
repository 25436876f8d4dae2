"""Tests for trainables.models.inflate: 2D -> 3D inflation of timm ResNets and VGGs (paper 003)."""
from __future__ import annotations

import functools
import math

import pytest
import timm
import torch
import torch.nn as nn

from trainables.models.inflate import RANDOM_SURROUND_STD, InflatedConv3d, inflate, masked_convs

# vgg11_bn's fc6 is a 7x7 conv to 4096 channels (103M parameters); a narrower fc6 (mlp_ratio) keeps the tests light and
# exercises the same ConvMlp code path.
CNN_KWARGS = {"resnet18": {}, "vgg11_bn": {"mlp_ratio": 1 / 16}, "test_resnet": {}}


@functools.lru_cache(maxsize=None)
def _cnn(name: str, seed: int = 0) -> nn.Module:
    """A random-init timm CNN in eval mode with non-trivial BatchNorm parameters and statistics (cached: tests treat it
    as read-only, which inflate's copy semantics let them do).

    timm zero-initialises the last BN of every residual branch; randomising all BN tensors makes the residual branches
    (and therefore their inflated convs) actually contribute to the compared outputs.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=5, **CNN_KWARGS.get(name, {}))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _static_clip(frame: torch.Tensor, t: int) -> torch.Tensor:
    """(B, C, H, W) -> the "boring video" (B, C, T, H, W): the same frame T times."""
    return frame.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()


def _frame(size: int = 64, seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _inflated_convs(model: nn.Module) -> dict[str, InflatedConv3d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, InflatedConv3d)}


# --- the boring-video check ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_boring_video_centered_zero_gives_the_2d_output(name: str) -> None:
    model2d = _cnn(name)
    model3d = inflate(model2d, mode="centered", surround="zero").eval()
    frame = _frame()
    with torch.no_grad():
        expected = model2d(frame)
        got = model3d(_static_clip(frame, 4))
    assert got.shape == expected.shape == (2, 5)
    assert (got - expected).abs().max().item() < 1e-4


def test_boring_video_check_is_sensitive_to_the_surround() -> None:
    # The same comparison with a random surround must fail, or the check above proves nothing.
    model2d = _cnn("resnet18")
    model3d = inflate(model2d, surround="random", surround_std=0.5).eval()
    frame = _frame()
    with torch.no_grad():
        assert (model3d(_static_clip(frame, 4)) - model2d(frame)).abs().max().item() > 1e-3


def test_boring_video_holds_with_dilation_and_masking() -> None:
    model2d = _cnn("resnet18")
    model3d = inflate(model2d, dilation=[1, 2, 4, 8], masking=True).eval()
    frame = _frame()
    with torch.no_grad():
        assert (model3d(_static_clip(frame, 4)) - model2d(frame)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_copied_with_replicate_padding_gives_the_2d_output(name: str) -> None:
    # Replicate padding keeps a static clip static at every layer, and the T copies of W/T sum to W.
    model2d = _cnn(name)
    model3d = inflate(model2d, mode="copied", time_padding="replicate").eval()
    frame = _frame()
    with torch.no_grad():
        assert (model3d(_static_clip(frame, 4)) - model2d(frame)).abs().max().item() < 1e-4


def test_copied_with_zero_padding_matches_only_away_from_the_clip_edges() -> None:
    # test_resnet has 10 temporal-kernel-3 convs on its longest path: zero padding at the clip edges reaches at most
    # 10 frames inwards, so in a 24-frame clip frames 10..13 see only real frames and must equal the 2D features.
    model2d = _cnn("test_resnet")
    model3d = inflate(model2d, mode="copied", time_padding="zeros").eval()
    n_temporal = sum(1 for m in model3d.modules() if isinstance(m, InflatedConv3d) and m.kernel_size[0] > 1)
    assert n_temporal == 10
    frame = _frame(32)
    with torch.no_grad():
        expected = model2d.forward_features(frame)
        feats = model3d.forward_features(_static_clip(frame, 24))
    assert feats.shape[2] == 24
    for t in range(10, 14):
        assert (feats[:, :, t] - expected).abs().max().item() < 1e-4, t
    # At the edges the missing (zero) taps make the copied kernel sum to less than the 2D kernel.
    assert (feats[:, :, 0] - expected).abs().max().item() > 1e-3
    assert (feats[:, :, -1] - expected).abs().max().item() > 1e-3


# --- kernels, BatchNorm, pools --------------------------------------------------------------------------------------

def test_centered_zero_kernel_layout_and_pointwise_convs() -> None:
    model2d = _cnn("resnet18")
    model3d = inflate(model2d, time_kernel=5)
    convs2d = {n: m for n, m in model2d.named_modules() if isinstance(m, nn.Conv2d)}
    convs3d = _inflated_convs(model3d)
    assert convs3d.keys() == convs2d.keys()
    for name, c3 in convs3d.items():
        c2 = convs2d[name]
        if c2.kernel_size == (1, 1):
            # 1x1 convs (downsample shortcuts) stay one frame wide.
            assert c3.kernel_size == (1, 1, 1)
            assert torch.equal(c3.weight[:, :, 0], c2.weight)
        else:
            assert c3.kernel_size == (5, *c2.kernel_size)
            assert c3.stride == (1, *c2.stride)
            assert c3.padding == (2, *c2.padding)
            assert torch.equal(c3.weight[:, :, 2], c2.weight)
            assert not c3.weight[:, :, [0, 1, 3, 4]].any()


def test_copied_kernel_is_repeated_and_divided() -> None:
    model2d = _cnn("test_resnet")
    model3d = inflate(model2d, mode="copied", time_kernel=3)
    conv2d = model2d.layer1[0].conv1
    conv3d = model3d.layer1[0].conv1
    for t in range(3):
        torch.testing.assert_close(conv3d.weight[:, :, t], conv2d.weight / 3)
    torch.testing.assert_close(conv3d.weight.sum(2), conv2d.weight)


def test_random_surround_has_the_documented_std() -> None:
    torch.manual_seed(0)
    conv2d = nn.Conv2d(256, 256, 3, padding=1)  # 590k taps per surround slice: a tight std estimate
    w2d = conv2d.weight.detach()
    torch.manual_seed(1)
    model3d = inflate(nn.Sequential(conv2d), surround="random")
    conv3d = model3d[0]
    surround = conv3d.weight.detach()[:, :, [0, 2]]
    expected_std = RANDOM_SURROUND_STD * w2d.std().item()
    assert RANDOM_SURROUND_STD == 0.1
    assert (surround != 0).float().mean().item() > 0.999
    assert surround.std().item() == pytest.approx(expected_std, rel=0.01)
    assert surround.mean().abs().item() < 0.01 * expected_std
    # Uniform (the paper's distribution): bounded by sqrt(3) * std.
    assert surround.abs().max().item() <= math.sqrt(3) * expected_std * (1 + 1e-6)
    assert torch.equal(conv3d.weight[:, :, 1], conv2d.weight)
    # torch's global RNG makes it reproducible; a custom std scales it.
    torch.manual_seed(1)
    assert torch.equal(inflate(nn.Sequential(conv2d), surround="random")[0].weight, conv3d.weight)
    wide = inflate(nn.Sequential(conv2d), surround="random", surround_std=0.5)[0].weight.detach()[:, :, [0, 2]]
    assert wide.std().item() == pytest.approx(0.5 * w2d.std().item(), rel=0.01)


def test_random_surround_fills_every_temporal_conv_of_a_resnet() -> None:
    model3d = inflate(_cnn("test_resnet"), surround="random")
    temporal = [c for c in _inflated_convs(model3d).values() if c.kernel_size[0] > 1]
    assert temporal
    for conv in temporal:
        assert conv.weight[:, :, [0, 2]].abs().min() >= 0 and (conv.weight[:, :, [0, 2]] != 0).float().mean() > 0.99


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_batchnorm_weights_and_running_statistics_are_copied(name: str) -> None:
    model2d = _cnn(name)
    model3d = inflate(model2d)
    bns2d = {n: m for n, m in model2d.named_modules() if isinstance(m, nn.BatchNorm2d)}
    bns3d = {n: m for n, m in model3d.named_modules() if isinstance(m, nn.BatchNorm3d)}
    assert bns3d.keys() == bns2d.keys() and bns2d
    for name_, bn3 in bns3d.items():
        bn2 = bns2d[name_]
        for key, value in bn2.state_dict().items():
            assert torch.equal(bn3.state_dict()[key], value), (name_, key)
        assert bn3.eps == bn2.eps and bn3.momentum == bn2.momentum


def test_no_2d_layer_is_left_and_the_input_is_unchanged() -> None:
    model2d = _cnn("vgg11_bn")
    before = {k: v.clone() for k, v in model2d.state_dict().items()}
    model3d = inflate(model2d)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)) for m in model3d.modules())
    assert any(isinstance(m, nn.Conv2d) for m in model2d.modules())
    for key, value in model2d.state_dict().items():
        assert torch.equal(value, before[key]), key
    # VGG's fc6/fc7 (ConvMlp) are per frame and keep their names, so 2D and 3D state dicts line up key for key.
    assert model3d.pre_logits.fc1.kernel_size == (1, 7, 7)
    assert model3d.state_dict().keys() == model2d.state_dict().keys()
    assert model3d.inflation["mode"] == "centered"


def test_pools_keep_time_and_global_pool_covers_time() -> None:
    model3d = inflate(_cnn("test_resnet"))
    assert model3d.maxpool.kernel_size == (1, 3, 3) and model3d.maxpool.stride == (1, 2, 2)
    assert model3d.layer2[0].downsample[0].kernel_size == (1, 2, 2)
    assert isinstance(model3d.global_pool.pool, nn.AdaptiveAvgPool3d)
    clip = torch.randn(1, 3, 5, 32, 32)
    with torch.no_grad():
        feats = model3d.forward_features(clip)
        pooled = model3d.forward_head(feats, pre_logits=True)
    assert feats.shape[2] == 5
    torch.testing.assert_close(pooled, feats.mean(dim=(2, 3, 4)))


def test_resnet50_inflates_and_keeps_time() -> None:
    model3d = inflate(timm.create_model("resnet50", pretrained=False, num_classes=3), dilation=[1, 2, 4, 8]).eval()
    with torch.no_grad():
        feats = model3d.forward_features(torch.randn(1, 3, 4, 32, 32))
    assert feats.shape == (1, 2048, 4, 1, 1)


# --- dilation -------------------------------------------------------------------------------------------------------

def test_dilation_per_resnet_stage_keeps_time() -> None:
    model3d = inflate(_cnn("resnet18"), dilation=[1, 2, 4, 8]).eval()
    expected = {"conv1": 1, "layer1": 1, "layer2": 2, "layer3": 4, "layer4": 8}
    for name, conv in _inflated_convs(model3d).items():
        if conv.kernel_size[0] == 1:
            assert conv.dilation[0] == 1 and conv.padding[0] == 0
            continue
        d = expected[name.split(".")[0]]
        assert conv.dilation[0] == d and conv.padding[0] == d, name
    for t in (4, 9):
        with torch.no_grad():
            feats = model3d.forward_features(torch.randn(1, 3, t, 32, 32))
        assert feats.shape[2] == t


def test_dilation_per_vgg_block_keeps_time() -> None:
    model3d = inflate(_cnn("vgg11_bn"), dilation=[1, 2, 4, 8]).eval()
    # vgg11: blocks of 1, 1, 2, 2, 2 convs between pools; 4 entries over 5 blocks -> 1, 1, 2, 4, 8.
    got = [c.dilation[0] for n, c in _inflated_convs(model3d).items() if n.startswith("features.")]
    assert got == [1, 1, 2, 2, 4, 4, 8, 8]
    with torch.no_grad():
        assert model3d.forward_features(torch.randn(1, 3, 4, 32, 32)).shape[2] == 4
        assert model3d(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)


def test_dilation_with_one_entry_per_stage() -> None:
    model3d = inflate(_cnn("test_resnet"), dilation=[1, 1, 2, 3, 5])
    assert model3d.conv1[0].dilation[0] == 1
    assert model3d.layer1[0].conv1.dilation[0] == 1
    assert model3d.layer2[0].conv1.dilation[0] == 2
    assert model3d.layer3[0].conv2.dilation[0] == 3
    assert model3d.layer4[0].conv2.dilation[0] == 5


# --- masking --------------------------------------------------------------------------------------------------------

def test_masking_keeps_the_centre_under_adamw_with_weight_decay() -> None:
    torch.manual_seed(0)
    model3d = inflate(_cnn("test_resnet"), masking=True, surround="random").train()
    masked = masked_convs(model3d)
    convs = _inflated_convs(model3d)
    assert masked and all(c.kernel_size[0] == 3 for c in masked)
    # Pointwise-in-time convs have no surround and stay trainable.
    assert all(not c.masked for c in convs.values() if c.kernel_size[0] == 1)
    centre_before = {id(c): c.weight.detach()[:, :, 1].clone() for c in masked}
    surround_before = {id(c): c.weight.detach()[:, :, [0, 2]].clone() for c in masked}
    pointwise_before = {n: c.weight.detach().clone() for n, c in convs.items() if c.kernel_size[0] == 1}

    optimizer = torch.optim.AdamW(model3d.parameters(), lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = model3d(torch.randn(2, 3, 3, 32, 32, generator=gen)).pow(2).mean()
        loss.backward()
        for conv in masked:
            assert not conv.weight.grad[:, :, 1].any()  # the centre gets an exactly zero gradient
        optimizer.step()

    for conv in masked:
        assert torch.equal(conv.weight[:, :, 1], centre_before[id(conv)])
        assert not torch.equal(conv.weight[:, :, [0, 2]], surround_before[id(conv)])
    for name, before in pointwise_before.items():
        assert not torch.equal(convs[name].weight, before), name


def test_masked_centre_survives_sgd_momentum_and_state_dict_reload() -> None:
    model3d = inflate(_cnn("test_resnet"), masking=True).train()
    conv = model3d.layer1[0].conv1
    centre = conv.weight.detach()[:, :, 1].clone()
    optimizer = torch.optim.SGD(model3d.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model3d(torch.randn(2, 3, 4, 32, 32)).sum().backward()
        optimizer.step()
    assert torch.equal(conv.weight[:, :, 1], centre)
    assert conv.weight[:, :, 0].any()  # the zero surround started learning

    # Loading a state dict re-freezes the loaded centre; the frozen buffer itself is not saved.
    state = model3d.state_dict()
    assert not any("frozen_centre" in k for k in state)
    other = inflate(_cnn("test_resnet", seed=5), masking=True)
    other.load_state_dict(state)
    assert torch.equal(other.layer1[0].conv1.frozen_centre, centre)
    assert torch.equal(other.layer1[0].conv1.effective_weight(), conv.weight)


# --- argument checks ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"time_kernel": 2}, "odd"),
    ({"mode": "stacked"}, "mode"),
    ({"surround": "gauss"}, "surround"),
    ({"dilation": [1, 0]}, "dilation"),
    ({"time_padding": "reflect"}, "time_padding"),
])
def test_invalid_settings_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        inflate(_cnn("test_resnet"), **kwargs)


def test_layers_without_a_3d_rule_are_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4))
    with pytest.raises(TypeError, match="InstanceNorm2d"):
        inflate(model)
    with pytest.raises(ValueError, match="feature_info"):
        inflate(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), dilation=[1, 2])
    # Without dilation a plain Sequential of supported layers inflates fine.
    plain = inflate(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    assert plain(torch.randn(1, 3, 2, 8, 8)).shape == (1, 4, 2, 8, 8)
