"""Tests for trainables.objectives.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.objectives.losses import (
    CompositeLoss,
    bin_centers,
    bin_edges,
    bin_labels,
    cross_entropy_bins,
    fit_bin_centroids,
    fit_bin_centroids_per_dim,
    ncce_bins,
)
from trainables.objectives.concordance import masked_ccc
from trainables.objectives.metrics import ccc


def _data(n: int = 64, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1
    pred = 0.6 * target + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.1
    return pred, target


def _parts_are_finite(parts: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in parts.values())


def test_masked_ccc_matches_numpy_metric() -> None:
    pred, target = _data()
    got = masked_ccc(target, pred, dim=0)
    assert got.shape == (2,)
    for j in range(2):
        assert got[j].item() == pytest.approx(ccc(target[:, j].numpy(), pred[:, j].numpy()), abs=1e-6)


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
    assert masked_ccc(const, const).dtype == torch.float32


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


# --- CE / nCCE ---------------------------------------------------------------


def test_bin_edges_and_centers() -> None:
    edges = bin_edges(20)
    assert edges.shape == (21,) and edges[0] == -1.0 and edges[-1] == 1.0
    assert edges.tolist() == [round(-1 + 0.1 * j, 1) for j in range(21)]  # exactly the decimal literals
    assert bin_centers(20)[0] == pytest.approx(-0.95) and bin_centers(20)[-1] == pytest.approx(0.95)
    assert bin_edges(4).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (-1.7, 0),  # below the range: clipped into the first bin
        (-1.0, 0),  # bottom edge
        (-0.95, 0),
        (-0.9, 1),  # an inner edge belongs to the bin on its right
        (-0.1, 9),
        (-1e-6, 9),
        (0.0, 10),
        (0.05, 10),
        (0.1, 11),
        (0.9, 19),
        (0.999, 19),
        (1.0, 19),  # top edge: last bin (closed)
        (1.3, 19),  # above the range: clipped into the last bin
    ],
)
def test_bin_assignment_table(label: float, expected: int, dtype: torch.dtype) -> None:
    assert bin_labels(torch.tensor([label], dtype=dtype), 20).item() == expected


def test_bin_labels_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bin_labels(torch.tensor([0.0, float("nan")]))


def test_cross_entropy_hand_value() -> None:
    # 4 bins; logits uniform -> CE = log 4 whatever the label
    logits = torch.zeros(3, 4)
    assert cross_entropy_bins(logits, torch.tensor([-1.0, 0.2, 0.9]), 4).item() == pytest.approx(math.log(4))
    # one confident sample: logits (2, 0, 0, 0), label in bin 0 -> -log(e^2 / (e^2 + 3))
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert cross_entropy_bins(logits, torch.tensor([-0.8], dtype=torch.float64), 4).item() == pytest.approx(expected)


def test_ncce_hand_value() -> None:
    # 4 bins, K = (-0.75, -0.25, 0.25, 0.75); uniform prediction: expected K = 0.
    # label 0.9 (bin 3): C = 1 + |0.75 - 0| = 1.75, CE = log 4 -> nCCE = 1.75 log 4
    k = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    got = ncce_bins(torch.zeros(1, 4), torch.tensor([0.9]), k)
    assert got.item() == pytest.approx(1.75 * math.log(4), rel=1e-6)


def test_ncce_equals_ce_when_costs_are_one() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 2, 20, generator=gen)
    pred, target = _data(n=50)
    target = target.float().clone()
    target[:5, 1] = float("nan")
    zeros = np.zeros((2, 20))
    ce_loss = CompositeLoss(w_ccc=0.0, w_ce=1.0, dim_names=("v", "a"), centroids=zeros)
    ncce_loss = CompositeLoss(w_ccc=0.0, w_ncce=1.0, dim_names=("v", "a"), centroids=zeros)
    a = ce_loss(pred.float(), target, logits)
    b = ncce_loss(pred.float(), target, logits)
    assert torch.equal(a, b)
    assert ce_loss.last_parts["ce_a"] == ce_loss.last_parts["ncce_a"]
    # constant (non-zero) centroids give cost 1 as well
    k = torch.full((20,), 0.3)
    lab = torch.rand(50) * 2 - 1
    assert torch.equal(ncce_bins(logits[:, 0], lab, k), cross_entropy_bins(logits[:, 0], lab, 20))


def test_ncce_cost_above_one_and_gradients() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 1, 20, generator=gen, requires_grad=True)
    target = torch.rand(40, 1, generator=gen) * 2 - 1
    cent = bin_centers(20)
    loss_fn = CompositeLoss(w_ccc=0.0, w_ncce=1.0, centroids=cent)
    loss = loss_fn(torch.zeros(40, 1), target, logits)
    loss.backward()
    parts = loss_fn.last_parts
    assert parts["ncce_0"] > parts["ce_0"] > 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_composite_per_dimension_weights_equal_hand_sum() -> None:
    gen = torch.Generator().manual_seed(2)
    pred, target = _data(n=60)
    logits = torch.randn(60, 2, 20, generator=gen, dtype=torch.float64)
    cent = np.stack([bin_centers(20), 0.5 * bin_centers(20)])
    w = {"ccc": [1.0, 0.66], "mse": [0.2, 0.0], "ce": [0.0, 0.34], "ncce": [0.1, 0.3]}
    loss_fn = CompositeLoss(w_ccc=w["ccc"], w_mse=w["mse"], w_ce=w["ce"], w_ncce=w["ncce"],
                            dim_names=("valence", "arousal"), centroids=cent)
    loss = loss_fn(pred, target, logits)
    parts = loss_fn.last_parts
    assert set(parts) == {f"{t}_{d}" for t in ("ccc", "mse", "ce", "ncce") for d in ("valence", "arousal")} | {
        "total"}
    per_dim = []
    for j, d in enumerate(("valence", "arousal")):
        per_dim.append(w["ccc"][j] * (1 - parts[f"ccc_{d}"]) + w["mse"][j] * parts[f"mse_{d}"]
                       + w["ce"][j] * parts[f"ce_{d}"] + w["ncce"][j] * parts[f"ncce_{d}"])
    assert loss.item() == pytest.approx(sum(per_dim) / 2, abs=1e-9)
    # parts agree with the standalone functions
    assert parts["ce_arousal"] == pytest.approx(cross_entropy_bins(logits[:, 1], target[:, 1], 20).item())
    assert parts["ncce_arousal"] == pytest.approx(ncce_bins(logits[:, 1], target[:, 1], cent[1]).item())
    assert parts["ccc_valence"] == pytest.approx(ccc(target[:, 0].numpy(), pred[:, 0].numpy()), abs=1e-6)


def test_classification_terms_need_logits_and_shape() -> None:
    loss_fn = CompositeLoss(w_ccc=1.0, w_ce=0.5)
    assert loss_fn.requires_logits and not CompositeLoss().requires_logits
    pred, target = _data(n=8)
    with pytest.raises(ValueError, match="logits are required"):
        loss_fn(pred, target)
    with pytest.raises(ValueError, match="logits must have shape"):
        loss_fn(pred, target, torch.zeros(8, 2, 10))
    with pytest.raises(ValueError, match="needs centroids"):
        CompositeLoss(w_ncce=1.0)
    with pytest.raises(ValueError, match="centroids must have shape"):
        CompositeLoss(w_ncce=1.0, centroids=np.zeros(5))
    with pytest.raises(ValueError, match="inconsistent"):
        CompositeLoss(w_ncce=1.0, centroids=np.zeros((3, 20)), dim_names=("v", "a"))
    # (B, T, D, n_bins) logits are flattened like the predictions
    logits = torch.randn(8, 2, 20, dtype=torch.float64)
    flat = loss_fn(pred, target, logits)
    batched = loss_fn(pred.reshape(2, 4, 2), target.reshape(2, 4, 2), logits.reshape(2, 4, 2, 20))
    assert batched.item() == pytest.approx(flat.item(), abs=1e-12)


def test_from_config_key_scheme() -> None:
    cfg = {"w_ccc": 1.0, "w_ccc_arousal": 0.66, "w_ce_arousal": 0.34, "lr": 1e-3, "weight_decay": 0.1}
    loss_fn = CompositeLoss.from_config(cfg, ("valence", "arousal"))
    assert loss_fn.w_ccc.tolist() == pytest.approx([1.0, 0.66])
    assert loss_fn.w_ce.tolist() == pytest.approx([0.0, 0.34])
    assert loss_fn.w_mse.tolist() == [0.0, 0.0] and loss_fn.requires_logits
    default = CompositeLoss.from_config({}, ("valence",))
    assert default.w_ccc.tolist() == [1.0]
    with pytest.raises(ValueError, match=r"unknown loss weight key\(s\) \['w_cc', 'w_ccc_dominance'\].*allowed"):
        CompositeLoss.from_config({"w_cc": 1.0, "w_ccc_dominance": 1.0}, ("valence", "arousal"))
    with pytest.raises(ValueError, match="needs centroids"):
        CompositeLoss.from_config({"w_ncce": 0.5}, ("valence",))
    with_c = CompositeLoss.from_config({"w_ncce": 0.5}, ("valence",), centroids=np.zeros(20), n_bins=20)
    assert with_c.w_ncce.tolist() == [0.5]


def test_fit_bin_centroids() -> None:
    rng = np.random.default_rng(0)
    labels = np.clip(rng.normal(0.1, 0.3, size=3000), -1, 1)
    labels[:10] = np.nan
    k1 = fit_bin_centroids(labels, k=20, seed=0)
    assert k1.shape == (20,) and np.all(np.diff(k1) > 0)
    assert np.all((k1 >= -1) & (k1 <= 1))
    np.testing.assert_array_equal(k1, fit_bin_centroids(labels, k=20, seed=0))  # deterministic
    # Fewer distinct values than k: nearest distinct value to each bin centre.
    likert = np.array([-1.0, -0.5, 0.0, 0.5, 1.0] * 10)
    k2 = fit_bin_centroids(likert, k=20)
    # bin centres -0.95, -0.85, ..., 0.95 -> nearest value (exact ties such as -0.75 go to the lower value)
    assert k2.tolist() == [-1.0] * 3 + [-0.5] * 5 + [0.0] * 5 + [0.5] * 5 + [1.0] * 2
    # 5 distinct values >= k = 4 clusters: ordinary k-means
    assert fit_bin_centroids(likert, k=4).shape == (4,)
    both = fit_bin_centroids_per_dim(np.stack([labels, -labels], axis=1), k=20)
    assert both.shape == (2, 20)
    with pytest.raises(ValueError, match="no annotated"):
        fit_bin_centroids(np.full(5, np.nan))
