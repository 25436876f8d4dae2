"""Measured costs (trainables/costs.py): FLOPs against hand counts, the peak-memory reset, and every trial's report
carrying its costs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.costs import count_gflops, inference_ms, parameters_m, peak_memory_mb, reset_peak_memory
from trainables.models import create_backbone


def test_layers_count_as_written_out():
    conv = torch.nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4))
    x = torch.zeros(1, 3, 4, 16, 16)
    outputs = 8 * 2 * 4 * 4  # channels x output positions
    assert count_gflops(conv, x) * 1e9 == pytest.approx(2 * outputs * 3 * 2 * 4 * 4)
    assert count_gflops(torch.nn.Linear(10, 4), torch.zeros(1, 10)) * 1e9 == pytest.approx(2 * 10 * 4)


def test_a_video_transformer_counts_its_patches_attention_and_mlps():
    """video_vit_tiny (width 48, 2 blocks, 3 heads, MLP 4x, 8-pixel patches, 2-frame tubelets) on one 8-frame 32x32
    window: patch embedding, per block q/k/v, the attention products, the output projection and the MLP, then the
    head; fused attention would count 0 on the CPU, so the math kernel is used while counting."""
    model = create_backbone("video_vit_tiny", out_dims=2)
    d, depth, n = 48, 2, (8 // 2) * (32 // 8) * (32 // 8)
    embed = 2 * n * d * 3 * 2 * 8 * 8
    block = 2 * n * d * 3 * d + 2 * (2 * n * n * d) + 2 * n * d * d + 2 * (2 * n * d * 4 * d)
    head = 2 * d * 2
    assert count_gflops(model, torch.zeros(1, 8, 3, 32, 32)) * 1e9 == pytest.approx(embed + depth * block + head)
    assert parameters_m(model) * 1e6 == sum(p.numel() for p in model.parameters())


def test_inference_time_is_a_positive_median_and_the_model_mode_is_kept():
    model = create_backbone("cnn_rnn_tiny", out_dims=2).train()
    ms = inference_ms(model, torch.zeros(1, 4, 3, 32, 32), warmup=1, repeats=3)
    assert ms > 0 and model.training


def test_the_peak_memory_counts_from_the_reset():
    device = torch.device("cpu")
    big = np.ones(200 * 2**20 // 8)  # 200 MiB touched
    high = peak_memory_mb(device)
    del big
    reset_peak_memory(device)
    low = peak_memory_mb(device)
    assert high - low > 150, (high, low)


# ---- every backbone family against a count from its layer shapes ----
#
# What torch's FlopCounterMode counts (found out by counting each layer alone; ``trainables.costs`` says the same):
# a convolution as 2 x Cin/groups x kernel volume per output element; a linear layer as 2 x in per output element (no
# bias adds); matrix products, so attention as its q/k/v and output projections plus 2 x (2 x n_q x n_k x d) for q.k
# and attention.v over all heads; a GRU as its two products per step and direction, 2 x (in x 3H) + 2 x (H x 3H) (torch
# runs it as ``addmm``; gates' element-wise work not counted). An LSTM on the CPU is one ``mkldnn_rnn_layer`` kernel
# that FlopCounterMode counts 0; ``trainables.costs`` adds 2 x (in x 4H) + 2 x (H x 4H) per step. Normalisation,
# activations, pooling and FFTs (MIMAMO's steerable pyramid) count 0.

FAMILIES = {  # backbone -> (window shape (B, T, C, H, W), constructor arguments: random init, no download)
    "cnn_rnn_tiny": ((1, 4, 3, 32, 32), {"pretrained": False}),
    "i3d_tiny": ((1, 4, 3, 32, 32), {"pretrained": False}),
    "tpsbt_tiny": ((1, 8, 3, 32, 32), {}),
    "conv3d_resnet_gru_tiny": ((1, 4, 3, 32, 32), {"pretrained": False}),
    "mimamo_tiny": ((1, 4, 3, 32, 32), {"pretrained": False}),
}


def counted_by_formula(model: torch.nn.Module, window: torch.Tensor) -> int:
    """The model's FLOPs from its layers' shapes as a forward pass meets them (hooks read each layer's input and
    output shapes), by the formulas above: no FlopCounterMode. TPSBT's attention applies its projections' weights
    with ``F.linear`` (its biases are built in the forward), so its ``Attention`` modules are counted whole, bar the
    output projection (an ``nn.Linear``, counted as one); its learned spatial pooling is a product of the softmaxed
    weights (B t, k, s) with the tokens (B t, s, D) besides its MLP."""
    from trainables.models.tpsbt import Attention, SpatialPool

    total = 0

    def conv(m, inputs, out):
        nonlocal total
        total += 2 * (m.in_channels // m.groups) * math.prod(m.kernel_size) * out.numel()

    def linear(m, inputs, out):
        nonlocal total
        total += 2 * m.in_features * out.numel()

    def rnn(m, inputs, out):
        nonlocal total
        x = inputs[0]
        steps = x.shape[0] * x.shape[1]  # batch x time, either layout
        gates = {"GRU": 3, "LSTM": 4}[m.mode]
        dirs = 2 if m.bidirectional else 1
        for layer in range(m.num_layers):
            size_in = m.input_size if layer == 0 else m.hidden_size * dirs
            total += dirs * steps * (2 * size_in * gates * m.hidden_size + 2 * m.hidden_size * gates * m.hidden_size)

    def attention(m, inputs, out):
        nonlocal total
        x = inputs[0]
        context = inputs[1] if len(inputs) > 1 and inputs[1] is not None else x
        (b, n, d), k = x.shape, context.shape[1]
        projections = 2 * b * n * d * d + 2 * b * k * d * 2 * d  # q; k and v
        total += projections + 2 * (2 * b * n * k * d)  # q.k and attention.v over all heads

    def pool(m, inputs, out):
        nonlocal total
        (b, n, d), t = inputs[0].shape, inputs[1]
        total += 2 * b * out.shape[1] * (n // t) * d  # (t k) pooled tokens, each a weighted sum of s = n / t

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, (torch.nn.GRU, torch.nn.LSTM)):
            hooks.append(m.register_forward_hook(rnn))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention))
        elif isinstance(m, SpatialPool):
            hooks.append(m.register_forward_hook(pool))
    try:
        with torch.no_grad():
            model.eval()(window)
    finally:
        for h in hooks:
            h.remove()
    return total


def per_module_counts(model: torch.nn.Module, window: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FlopCounterMode's total and its own per-module breakdown (module path -> FLOPs), attention on the math kernel
    as ``count_gflops`` runs it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.costs import RNN_FORMULAS

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False, depth=None, custom_mapping=RNN_FORMULAS) as counter:
        model.eval()(window)
    counts = {path: sum(ops.values()) for path, ops in counter.get_flop_counts().items() if path != "Global"}
    return counter.get_total_flops(), counts


def outermost(counts: dict[str, int], root: str) -> dict[str, int]:
    """The modules below ``root`` that FlopCounterMode saw called whose enclosing module it did not (a child called as
    a module, or a grandchild where the parent's own forward was bypassed: i3d calls ``encoder.forward_features``)."""
    return {p: v for p, v in counts.items()
            if p != root and not any(p.startswith(q + ".") for q in counts if q != root and q != p)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_counts_as_its_layer_shapes_say(name):
    """Per family, at the tiny size: the measured GFLOPs equal the count from the layer shapes (the whole model), and
    the sum over FlopCounterMode's per-module breakdown (nothing counted outside a module)."""
    shape, kwargs = FAMILIES[name]
    torch.manual_seed(0)
    model = create_backbone(name, out_dims=2, **kwargs)
    window = torch.zeros(shape)
    measured = count_gflops(model, window) * 1e9
    total, counts = per_module_counts(model, window)
    assert measured == total
    assert measured == counted_by_formula(model, window)
    root = type(model).__name__
    assert counts[root] == total and sum(outermost(counts, root).values()) == total


def test_characteristic_layers_of_each_family_written_out():
    """One characteristic part of every family counted by hand from its shapes (FlopCounterMode's per-module count),
    and the whole of each model at its tiny size as these tests measured it."""
    counts = {}
    for name, (shape, kwargs) in FAMILIES.items():
        torch.manual_seed(0)
        total, counts[name] = per_module_counts(create_backbone(name, out_dims=2, **kwargs), torch.zeros(shape))
        counts[name]["total"] = total
    # cnn_rnn_tiny: a 64-unit GRU over 4 frames of 64 features: 4 x (2 x 64 x 192 + 2 x 64 x 192)
    assert counts["cnn_rnn_tiny"]["CnnRnn.rnn"] == 4 * (2 * 64 * 3 * 64 + 2 * 64 * 3 * 64) == 196_608
    # i3d_tiny: the inflated stem, 3 -> 16 channels, kernel 3x3x3, stride (1, 2, 2): 16 x 4 x 16 x 16 outputs
    assert counts["i3d_tiny"]["I3D.encoder.conv1.0"] == 2 * (16 * 4 * 16 * 16) * 3 * 27 == 2_654_208
    # tpsbt_tiny: 8 frames, 32x32, 8-pixel patches, 2-frame tubelets: n = 4 x 4 x 4 = 64 tokens of width 48
    n, d = 64, 48
    assert counts["tpsbt_tiny"]["TPSBT.patch_embed.proj"] == 2 * n * d * 3 * 2 * 8 * 8 == 2_359_296
    block = 2 * n * d * 3 * d + 2 * (2 * n * n * d) + 2 * n * d * d + 2 * (2 * n * d * 4 * d)  # qkv, attn, proj, MLP
    assert counts["tpsbt_tiny"]["TPSBT.blocks.0"] == block == 4_325_376
    # conv3d_resnet_gru_tiny: a bidirectional 32-unit GRU over 4 steps of 48 features
    assert counts["conv3d_resnet_gru_tiny"]["Conv3dResNetGRU.gru"] == 2 * 4 * (2 * 48 * 96 + 2 * 32 * 96) == 122_880
    # mimamo_tiny: a 32-unit GRU over 4 steps of 64 features (spatial and phase features together)
    assert counts["mimamo_tiny"]["Mimamo.rnn"] == 4 * (2 * 64 * 96 + 2 * 32 * 96) == 73_728
    assert {name: c["total"] for name, c in counts.items()} == {
        "cnn_rnn_tiny": 10_203_136, "i3d_tiny": 95_926_912, "tpsbt_tiny": 13_713_600,
        "conv3d_resnet_gru_tiny": 12_495_872, "mimamo_tiny": 42_926_592}


def test_an_lstm_counts_what_a_gru_would_with_four_gates():
    """On the CPU torch runs an LSTM as ``mkldnn_rnn_layer``, which FlopCounterMode alone counts 0."""
    lstm = torch.nn.LSTM(4, 8, num_layers=2, bidirectional=True, batch_first=True)
    steps = 5
    first = 2 * steps * (2 * 4 * 32 + 2 * 8 * 32)  # two directions, input 4
    second = 2 * steps * (2 * 16 * 32 + 2 * 8 * 32)  # input: both directions' 8
    assert count_gflops(lstm, torch.zeros(1, steps, 4)) * 1e9 == first + second == 23_040
    model = create_backbone("cnn_rnn_tiny", out_dims=2, pretrained=False, rnn="lstm")
    window = torch.zeros(1, 4, 3, 32, 32)
    assert count_gflops(model, window) * 1e9 == counted_by_formula(model, window)
