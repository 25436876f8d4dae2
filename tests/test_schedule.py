"""The trial's learning-rate schedule (trainables.loop.warmup_cosine) on the optimizer groups a trial builds."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.config import TrialConfig
from trainables.loop import build_model, optimizer_groups, warmup_cosine

LR, TOTAL, WARMUP, MIN_RATIO = 1e-3, 20, 4, 0.1


def _lrs_by_step(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[list[float]]:
    """Each group's lr at every optimizer step, stepped as the training loop does (optimizer, then scheduler)."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("warmup", [WARMUP, 0])
def test_warmup_then_cosine_to_the_floor_of_each_layer_decay_group(warmup: int) -> None:
    """Known factors: (s + 1) / warmup during warmup, the full lr at the last warmup step and the first cosine step,
    half-way between 1 and min_ratio mid-cosine, min_ratio at the end and after it; each group scaled by its own
    layer-decay lr (so the lowest group's floor is min_ratio of its own lr)."""
    cfg = TrialConfig.from_dict({"backbone": "video_vit_tiny", "lr": LR, "weight_decay": 0.05, "layer_decay": 0.5})
    model = build_model(cfg, out_dims=2, in_chans=3)
    optimizer = torch.optim.AdamW(optimizer_groups(model, cfg), lr=LR, weight_decay=0.05)
    base = [g["lr"] for g in optimizer.param_groups]
    assert base[0] == LR and min(base) == pytest.approx(LR * 0.5 ** (model.depth + 1))
    lrs = _lrs_by_step(optimizer, warmup_cosine(optimizer, TOTAL, warmup, MIN_RATIO), TOTAL + 3)

    mid = (warmup + TOTAL) // 2  # progress 1/2 when TOTAL - warmup is even
    expected = {mid: (1 + MIN_RATIO) / 2,
                TOTAL - 1: MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 - math.cos(math.pi / (TOTAL - warmup))),
                TOTAL: MIN_RATIO, TOTAL + 2: MIN_RATIO}
    if warmup:
        expected.update({0: 0.25, 1: 0.5, warmup - 1: 1.0, warmup: 1.0, warmup + 1: 0.5 * (1 + MIN_RATIO) + 0.5 * (
            1 - MIN_RATIO) * math.cos(math.pi / (TOTAL - warmup))})
    else:
        expected.update({0: 1.0})
    for step, factor in expected.items():
        assert lrs[step] == pytest.approx([factor * b for b in base], rel=1e-12), step
    # monotone: up during warmup, down after
    head = [row[0] for row in lrs]
    assert all(a < b for a, b in zip(head[:warmup], head[1:warmup]))
    assert all(a >= b for a, b in zip(head[warmup:], head[warmup + 1:]))
