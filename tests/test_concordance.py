"""Tests for trainables.objectives.concordance.masked_ccc, the one CCC implementation (the metric ``ccc`` and the
loss ``CompositeLoss`` call it). Reference values are hand-computed (see tests/test_metrics.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.objectives.concordance import masked_ccc

NAN = float("nan")


def test_masked_ccc_hand_value_and_other_dim() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p = torch.tensor([[2.0, 3.0, 4.0, 5.0]])
    # 2*1.25 / (1.25 + 1.25 + 1) = 5/7 (see test_metrics)
    assert masked_ccc(t, p, dim=1).item() == pytest.approx(5 / 7, abs=1e-6)
    # Constant and equal: 0 / eps = 0, the same rule as the NumPy metric.
    c = torch.full((5,), 0.3)
    assert masked_ccc(c, c).item() == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        masked_ccc(t, p[:, :3], dim=1)


def test_nan_targets_mask_their_entries_per_column() -> None:
    # Column 0: rows 0-3 annotated -> t (1, 2, 3, 4), p (2, 3, 4, 5): 5/7. Column 1: rows 1-4 -> t (1, 2, 3, 4),
    # p (2, 4, 6, 8): 0.4. The prediction on an unannotated row (even NaN) changes nothing.
    t = torch.tensor([[1.0, NAN], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0], [NAN, 4.0]], dtype=torch.float64)
    p = torch.tensor([[2.0, NAN], [3.0, 2.0], [4.0, 4.0], [5.0, 6.0], [1e6, 8.0]], dtype=torch.float64,
                     requires_grad=True)
    got = masked_ccc(t, p)
    assert got[0].item() == pytest.approx(5 / 7, abs=1e-12) and got[1].item() == pytest.approx(0.4, abs=1e-12)
    got.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert p.grad[4, 0] == 0 and p.grad[0, 1] == 0


def test_constant_prediction_scores_zero_but_keeps_the_formula_gradient() -> None:
    t = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    p = torch.full((4,), 0.1, dtype=torch.float64, requires_grad=True)
    value = masked_ccc(t, p)
    assert value.item() == 0.0
    value.backward()
    # d CCC / d p_i = 2 (t_i - mu_t) / (N * denom) at a constant p; denom = 1.25 + 0 + (2.5 - 0.1)^2 = 7.01
    expected = 2 * (t - 2.5) / (4 * 7.01)
    assert p.grad is not None
    np.testing.assert_allclose(p.grad.numpy(), expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("t", "p"), [
    ([0.0, 0.0], [0.0, 1e-30]),  # var_p underflows to 0 without the joint rescaling
    ([1e30, -1e30], [-1e29, 1e29]),  # squares overflow float32 without it
    ([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]),  # both constant and equal: 0/0 in the formula
    ([0.0, 0.0], [0.0, 0.0]),
])
def test_never_nan_for_finite_input(t, p, dtype) -> None:
    value = masked_ccc(torch.tensor(t, dtype=dtype), torch.tensor(p, dtype=dtype)).item()
    assert math.isfinite(value) and -1.0 - 1e-6 <= value <= 1.0 + 1e-6


def test_fewer_than_two_annotated_entries_give_zero() -> None:
    t = torch.tensor([[0.5, NAN], [NAN, NAN], [NAN, NAN]])
    p = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    assert masked_ccc(t, p).tolist() == [0.0, 0.0]


def test_nan_prediction_on_an_annotated_entry_propagates() -> None:
    t = torch.tensor([0.1, 0.2, 0.3])
    assert math.isnan(masked_ccc(t, torch.tensor([0.1, NAN, 0.3])).item())


def test_eps_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="eps"):
        masked_ccc(torch.zeros(3), torch.zeros(3), eps=-1.0)
