"""Measured costs (trainables/costs.py): FLOPs against hand counts, the peak-memory reset, and every trial's report
carrying its costs."""
from __future__ import annotations

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
