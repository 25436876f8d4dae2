"""Tests for trainables.objectives.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.objectives.losses import CompositeLoss, ccc_torch
from trainables.objectives.metrics import ccc


def _data(n: int = 64, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1
    pred = 0.6 * target + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.1
    return pred, target


def _parts_are_finite(parts: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in parts.values())


def test_ccc_torch_matches_numpy_metric() -> None:
    pred, target = _data()
    got = ccc_torch(target, pred, dim=0)
    assert got.shape == (2,)
    for j in range(2):
        assert got[j].item() == pytest.approx(ccc(target[:, j].numpy(), pred[:, j].numpy()), abs=1e-6)


def test_ccc_torch_hand_value_and_other_dim() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p = torch.tensor([[2.0, 3.0, 4.0, 5.0]])
    # 2*1.25 / (1.25 + 1.25 + 1) = 5/7 (see test_metrics)
    assert ccc_torch(t, p, dim=1).item() == pytest.approx(5 / 7, abs=1e-6)
    # Constant and equal: 0 / eps = 0, the same rule as the NumPy metric.
    c = torch.full((5,), 0.3)
    assert ccc_torch(c, c).item() == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        ccc_torch(t, p[:, :3], dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_composite_equals_one_minus_metric_ccc(dtype: torch.dtype) -> None:
    pred, target = _data()
    loss_fn = CompositeLoss()
    loss = loss_fn(pred.to(dtype), target.to(dtype))
    expected = np.mean([1 - ccc(target[:, j].numpy(), pred[:, j].numpy()) for j in range(2)])
    assert loss.dim() == 0 and loss.dtype == dtype
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_composite_mse_part_and_weights_per_dim() -> None:
    pred, target = _data()
    loss_fn = CompositeLoss(w_ccc=[1.0, 0.5], w_mse=[0.0, 2.0], dim_names=("valence", "arousal"))
    loss = loss_fn(pred, target)
    c = [ccc(target[:, j].numpy(), pred[:, j].numpy()) for j in range(2)]
    mse = ((pred - target) ** 2).mean(dim=0).numpy()
    expected = ((1.0 * (1 - c[0])) + (0.5 * (1 - c[1]) + 2.0 * mse[1])) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    parts = loss_fn.last_parts
    assert set(parts) == {"ccc_valence", "mse_valence", "ccc_arousal", "mse_arousal", "total"}
    assert parts["ccc_valence"] == pytest.approx(c[0], abs=1e-6)
    assert parts["mse_arousal"] == pytest.approx(float(mse[1]), abs=1e-9)
    assert parts["total"] == pytest.approx(loss.item())
    assert all(isinstance(v, float) for v in parts.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_upcast(dtype: torch.dtype) -> None:
    pred, target = _data()
    loss = CompositeLoss()(pred.to(dtype), target.to(dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    const = torch.full((8, 2), 0.25, dtype=dtype)
    # Constant and equal: eps must survive (fp16 would flush 1e-8 to 0 -> NaN).
    assert CompositeLoss()(const, const).item() == 1.0
    assert ccc_torch(const, const).dtype == torch.float32


def test_gradient_flows() -> None:
    pred, target = _data(d=2)
    pred = pred.float().requires_grad_(True)
    loss = CompositeLoss(w_ccc=1.0, w_mse=0.5)(pred, target.float())
    loss.backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    # A small step against the gradient lowers the loss.
    with torch.no_grad():
        stepped = pred - 0.1 * pred.grad
    assert CompositeLoss(w_ccc=1.0, w_mse=0.5)(stepped, target.float()) < loss


def test_bt_d_input_is_flattened() -> None:
    pred, target = _data(n=24)
    loss_fn = CompositeLoss(w_ccc=1.0, w_mse=1.0)
    flat = loss_fn(pred, target)
    batched = loss_fn(pred.reshape(4, 6, 2), target.reshape(4, 6, 2))
    assert batched.item() == pytest.approx(flat.item(), abs=1e-12)


def test_nan_targets_are_masked_per_dimension() -> None:
    pred, target = _data(n=40)
    target_nan = target.clone()
    target_nan[:10, 0] = float("nan")  # valence unannotated on 10 rows
    target_nan[30:, 1] = float("nan")  # arousal unannotated on 10 other rows
    pred = pred.clone().requires_grad_(True)
    loss_fn = CompositeLoss(w_ccc=1.0, w_mse=1.0, dim_names=("v", "a"))
    loss = loss_fn(pred, target_nan)
    loss.backward()
    ref0 = CompositeLoss(w_ccc=1.0, w_mse=1.0)(pred[10:, :1].detach(), target[10:, :1])
    ref1 = CompositeLoss(w_ccc=1.0, w_mse=1.0)(pred[:30, 1:].detach(), target[:30, 1:])
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx((ref0.item() + ref1.item()) / 2, abs=1e-10)
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert (pred.grad[:10, 0] == 0).all() and (pred.grad[30:, 1] == 0).all()
    assert _parts_are_finite(loss_fn.last_parts)


def test_unscored_dimension_is_left_out() -> None:
    pred, target = _data(n=20)
    target = target.clone()
    target[1:, 1] = float("nan")  # arousal: 1 annotated row -> CCC undefined
    loss_fn = CompositeLoss(dim_names=("v", "a"))
    loss = loss_fn(pred, target)
    only_v = CompositeLoss()(pred[:, :1], target[:, :1])
    assert loss.item() == pytest.approx(only_v.item(), abs=1e-12)
    assert math.isnan(loss_fn.last_parts["ccc_a"]) and math.isnan(loss_fn.last_parts["mse_a"])


def test_fully_unannotated_batch_gives_zero_with_graph() -> None:
    pred = torch.randn(8, 2, requires_grad=True)
    loss = CompositeLoss()(pred, torch.full((8, 2), float("nan")))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and (pred.grad == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w_ccc": 0.0, "w_mse": 0.0}, "all weights are zero"),
        ({"w_ccc": [0.0, 0.0], "w_mse": [0.0, 0.0]}, "all weights are zero"),
        ({"w_ccc": -1.0}, ">= 0"),
        ({"w_ccc": [1.0, -0.1]}, ">= 0"),
        ({"w_mse": float("nan")}, "finite"),
        ({"w_ccc": []}, "non-empty"),
        ({"w_ccc": [1.0, 1.0], "w_mse": [1.0, 1.0, 1.0]}, "inconsistent"),
        ({"dim_names": ("a",), "w_ccc": [1.0, 1.0]}, "inconsistent"),
        ({"dim_names": ("a", "a")}, "unique"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_invalid_configuration_raises(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CompositeLoss(**kwargs)  # type: ignore[arg-type]


def test_invalid_call_raises() -> None:
    loss_fn = CompositeLoss(w_ccc=[1.0, 1.0])
    with pytest.raises(ValueError, match="shape mismatch"):
        loss_fn(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="configured for D=2"):
        loss_fn(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        CompositeLoss()(torch.zeros(4), torch.zeros(4))


def test_zero_weight_dimension_is_allowed() -> None:
    pred, target = _data()
    loss = CompositeLoss(w_ccc=[0.0, 1.0])(pred, target)
    expected = (1 - ccc(target[:, 1].numpy(), pred[:, 1].numpy())) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_last_parts_empty_before_first_call() -> None:
    assert CompositeLoss().last_parts == {}
