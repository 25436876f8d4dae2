"""Tests for trainables.objectives.metrics (hand-computed reference values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trainables.objectives.metrics import ccc, mae, mape, pcc, per_video_report, regression_report, rmse, to_native

T = [1.0, 2.0, 3.0, 4.0]


# --- ccc -------------------------------------------------------------------


def test_ccc_shifted_by_one() -> None:
    # mu_t=2.5, mu_p=3.5, var_t=var_p=cov=1.25 (population)
    # CCC = 2*1.25 / (1.25 + 1.25 + 1^2) = 2.5 / 3.5 = 5/7
    assert ccc(T, [2.0, 3.0, 4.0, 5.0]) == pytest.approx(5 / 7, abs=1e-12)
    assert ccc(T, [2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.7142857142857143, abs=1e-12)


def test_ccc_scaled_by_two() -> None:
    # p = 2t: mu_p=5, var_p=5, cov=2.5; denom = 1.25 + 5 + (2.5-5)^2 = 12.5
    # CCC = 5 / 12.5 = 0.4
    assert ccc(T, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(0.4, abs=1e-12)


def test_ccc_swapped_middle() -> None:
    # p=[1,3,2,4]: cov = (2.25-0.25-0.25+2.25)/4 = 1.0, vars 1.25, same mean
    # CCC = 2 / 2.5 = 0.8
    assert ccc(T, [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8, abs=1e-12)


def test_ccc_perfect_and_negated() -> None:
    assert ccc(T, T) == 1.0
    zero_mean = [-1.5, -0.5, 0.5, 1.5]
    assert ccc(zero_mean, [-v for v in zero_mean]) == -1.0


def test_ccc_constant_prediction_is_zero() -> None:
    assert ccc(T, [2.5, 2.5, 2.5, 2.5]) == 0.0
    # Both constant and equal: formula is 0/0, defined as 0 (constant prediction).
    assert ccc([0.1, 0.1, 0.1], [0.1, 0.1, 0.1]) == 0.0
    # Constant target, varying prediction: cov = 0 -> 0.
    assert ccc([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "length mismatch"),
        ([1.0], [1.0], "at least 2"),
        ([], [], "at least 2"),
        ([1.0, float("nan")], [1.0, 2.0], "y_true contains non-finite"),
        ([1.0, 2.0], [1.0, float("inf")], "y_pred contains non-finite"),
        ([[1.0, 2.0]], [1.0, 2.0], "y_true must be 1-D"),
        ([1.0, 2.0], [[1.0, 2.0]], "y_pred must be 1-D"),
    ],
)
@pytest.mark.parametrize("fn", [ccc, pcc, rmse, mae])
def test_invalid_inputs_raise(fn, y_true, y_pred, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        fn(y_true, y_pred)


# The whole finite float64 range, including subnormals and values near 1e308,
# where naive moments underflow to 0 or overflow to inf.
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(arrays(np.float64, n, elements=finite), arrays(np.float64, n, elements=finite))
    )
)
def test_metrics_never_nan_and_bounded(pair: tuple[np.ndarray, np.ndarray]) -> None:
    t, p = pair
    c, r = ccc(t, p), pcc(t, p)
    assert -1.0 <= c <= 1.0 and not math.isnan(c)
    assert -1.0 <= r <= 1.0 and not math.isnan(r)
    # |CCC| <= |PCC| always (the denominator of CCC is >= that of PCC by AM-GM).
    assert abs(c) <= abs(r) + 1e-9
    e_rms, e_abs = rmse(t, p), mae(t, p)
    assert not math.isnan(e_rms) and not math.isnan(e_abs)
    assert e_rms >= e_abs * (1 - 1e-12) >= 0.0


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        ([0.0, 0.0], [0.0, 1e-200]),  # var_p underflows to 0 without rescaling
        ([0.0, 1e-170], [1e-170, 0.0]),
        ([1e308, -1e308], [-1e307, 1e307]),  # (t - p)**2 overflows without rescaling
        ([5e-324, 0.0], [0.0, 5e-324]),  # subnormals
    ],
)
def test_extreme_magnitudes_give_finite_results(y_true: list[float], y_pred: list[float]) -> None:
    for fn in (ccc, pcc, rmse, mae):
        assert math.isfinite(fn(y_true, y_pred)), fn.__name__


def test_extreme_magnitudes_known_values() -> None:
    # Reflections about a common mean -> perfect disagreement.
    assert ccc([1e308, -1e308], [-1e308, 1e308]) == pytest.approx(-1.0)
    assert ccc([0.0, 1e-170], [1e-170, 0.0]) == pytest.approx(-1.0)
    # errors 1.1e308 each: naive squares overflow; 1e-200: naive squares underflow.
    assert rmse([1e308, -1e308], [-1e307, 1e307]) == pytest.approx(1.1e308)
    assert mae([1e308, -1e308], [-1e307, 1e307]) == pytest.approx(1.1e308)
    assert rmse([0.0, 0.0], [0.0, 1e-200]) == pytest.approx(1e-200 / math.sqrt(2))
    assert mae([0.0, 0.0], [0.0, 1e-200]) == pytest.approx(0.5e-200)
    # A true error beyond float64 max is reported as inf, not NaN.
    assert rmse([1.5e308, -1.5e308], [-1.5e308, 1.5e308]) == math.inf


# --- pcc / rmse / mae ----------------------------------------------------


def test_pcc_known_values() -> None:
    assert pcc(T, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0, abs=1e-12)  # affine -> 1
    assert pcc(T, [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8, abs=1e-12)  # cov 1 / 1.25
    assert pcc(T, [-1.0, -2.0, -3.0, -4.0]) == pytest.approx(-1.0, abs=1e-12)
    assert pcc(T, [7.0, 7.0, 7.0, 7.0]) == 0.0  # constant prediction
    assert pcc([7.0, 7.0, 7.0, 7.0], T) == 0.0  # constant target


def test_rmse_mae_known_values() -> None:
    # errors 1, 2, 3, 4: MSE = (1+4+9+16)/4 = 7.5, MAE = 10/4 = 2.5
    assert rmse(T, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(math.sqrt(7.5), abs=1e-12)
    assert rmse(T, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(2.7386127875258306, abs=1e-12)
    assert mae(T, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(2.5, abs=1e-12)
    assert rmse(T, T) == 0.0 and mae(T, T) == 0.0
    # errors 3, -4: RMSE = sqrt(12.5), MAE = 3.5
    assert rmse([0.0, 0.0], [3.0, -4.0]) == pytest.approx(math.sqrt(12.5))
    assert mae([0.0, 0.0], [3.0, -4.0]) == pytest.approx(3.5)


# --- regression_report ----------------------------------------------------


def test_regression_report_masks_nan_rows_per_dimension() -> None:
    nan = float("nan")
    y_true = np.array(
        [
            [1.0, nan],
            [2.0, 1.0],
            [3.0, 2.0],
            [4.0, 3.0],
            [nan, 4.0],
        ]
    )
    y_pred = np.array(
        [
            [2.0, -50.0],  # arousal row ignored (unannotated), value irrelevant
            [3.0, 2.0],
            [4.0, 4.0],
            [5.0, 6.0],
            [nan, 8.0],  # NaN prediction on an unannotated step is allowed
        ]
    )
    rep = regression_report(y_true, y_pred)
    assert list(rep) == [
        "ccc_valence", "pcc_valence", "rmse_valence", "mae_valence",
        "ccc_arousal", "pcc_arousal", "rmse_arousal", "mae_arousal",
        "ccc_mean",
    ]  # fmt: skip
    assert rep["ccc_valence"] == pytest.approx(5 / 7)
    assert rep["pcc_valence"] == pytest.approx(1.0)
    assert rep["rmse_valence"] == pytest.approx(1.0)
    assert rep["mae_valence"] == pytest.approx(1.0)
    assert rep["ccc_arousal"] == pytest.approx(0.4)
    assert rep["pcc_arousal"] == pytest.approx(1.0)
    assert rep["rmse_arousal"] == pytest.approx(math.sqrt(7.5))
    assert rep["mae_arousal"] == pytest.approx(2.5)
    assert rep["ccc_mean"] == pytest.approx((5 / 7 + 0.4) / 2)
    assert all(isinstance(v, float) for v in rep.values())


def test_regression_report_custom_dims() -> None:
    rep = regression_report(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [3.0]]), dims=("valence",))
    assert rep["ccc_valence"] == 1.0 and rep["ccc_mean"] == 1.0


def test_regression_report_errors() -> None:
    nan = float("nan")
    good = np.zeros((3, 2)) + np.arange(3)[:, None]
    with pytest.raises(ValueError, match="2-D"):
        regression_report(np.arange(3.0), np.arange(3.0))
    with pytest.raises(ValueError, match="shape mismatch"):
        regression_report(good, good[:2])
    with pytest.raises(ValueError, match="dims has 3 names"):
        regression_report(good, good, dims=("a", "b", "c"))
    with pytest.raises(ValueError, match="unique"):
        regression_report(good, good, dims=("a", "a"))
    only_one = good.copy()
    only_one[1:, 1] = nan
    with pytest.raises(ValueError, match="'arousal' has 1 annotated rows"):
        regression_report(only_one, good)
    bad_pred = good.copy()
    bad_pred[0, 0] = nan
    with pytest.raises(ValueError, match="'valence'"):
        regression_report(good, bad_pred)
    inf_true = good.copy()
    inf_true[0, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        regression_report(inf_true, good)


# --- mape -------------------------------------------------------------------


def test_mape_hand_values() -> None:
    # |e| / max(|t|, 0.1): 0.1/0.5 = 0.2, 0.1/0.2 = 0.5, 0.05/0.1 = 0.5 (floored), 0.5/1 = 0.5 -> 1.7/4
    t = [0.5, -0.2, 0.05, 1.0]
    p = [0.4, -0.1, 0.0, 0.5]
    assert mape(t, p) == pytest.approx(0.425, abs=1e-12)
    # label exactly 0: denominator is eps, not 0
    assert mape([0.0, 1.0], [0.02, 1.0]) == pytest.approx((0.02 / 0.1 + 0.0) / 2)
    # classic relative error away from 0: errors 10% and 20%
    assert mape([2.0, 4.0], [2.2, 3.2]) == pytest.approx(0.15)
    assert mape([0.0, 0.0], [0.5, -0.5], eps=0.5) == pytest.approx(1.0)
    assert mape(T, T) == 0.0
    with pytest.raises(ValueError, match="eps"):
        mape(T, T, eps=0.0)
    with pytest.raises(ValueError, match="length mismatch"):
        mape([1.0, 2.0], [1.0])


def test_regression_report_native_scale() -> None:
    y_true = np.array([[-1.0, 0.0], [0.0, 0.5], [1.0, 1.0], [0.5, np.nan]])
    y_pred = np.array([[-0.5, 0.0], [0.0, 0.0], [0.5, 1.0], [0.5, 0.0]])
    base = regression_report(y_true, y_pred)
    rep = regression_report(y_true, y_pred, scale=[(1.0, 9.0), (0.0, 1.0)], include_mape=True)
    # The default keys keep their order; mape is inserted per dim, native keys come last.
    assert list(rep)[:6] == ["ccc_valence", "pcc_valence", "rmse_valence", "mae_valence", "mape_valence",
                             "ccc_arousal"]
    assert list(rep)[11:] == [f"{m}_{d}_native" for d in ("valence", "arousal")
                              for m in ("ccc", "pcc", "rmse", "mae", "mape")]
    for d, half_range in (("valence", 4.0), ("arousal", 0.5)):
        assert rep[f"ccc_{d}_native"] == pytest.approx(base[f"ccc_{d}"], abs=1e-12)  # invariant
        assert rep[f"pcc_{d}_native"] == pytest.approx(base[f"pcc_{d}"], abs=1e-12)  # invariant
        assert rep[f"rmse_{d}_native"] == pytest.approx(base[f"rmse_{d}"] * half_range)
        assert rep[f"mae_{d}_native"] == pytest.approx(base[f"mae_{d}"] * half_range)
    # valence on 1..9: true (1, 5, 9, 7), pred (3, 5, 7, 7): errors 2, 0, 2, 0 over |t| -> (2/1 + 2/9) / 4
    assert rep["mape_valence_native"] == pytest.approx((2.0 + 2.0 / 9.0) / 4)
    # arousal on 0..1: true (0.5, 0.75, 1), pred (0.5, 0.5, 1): 0.25 / 0.75 / 3
    assert rep["mape_arousal_native"] == pytest.approx(0.25 / 0.75 / 3)
    one_pair = regression_report(y_true, y_pred, scale=(-5.0, 5.0))
    assert one_pair["rmse_arousal_native"] == pytest.approx(base["rmse_arousal"] * 5.0)
    only_v = regression_report(y_true, y_pred, scale={"valence": (1.0, 9.0)})
    assert "ccc_valence_native" in only_v and "ccc_arousal_native" not in only_v
    assert to_native([-1.0, 0.0, 1.0], 1.0, 9.0).tolist() == [1.0, 5.0, 9.0]
    with pytest.raises(ValueError, match="high > low"):
        regression_report(y_true, y_pred, scale=(1.0, 1.0))
    with pytest.raises(ValueError, match="unknown dimension"):
        regression_report(y_true, y_pred, scale={"dominance": (0.0, 1.0)})


def test_per_video_report() -> None:
    nan = float("nan")
    videos = {
        # valence: CCC 5/7, PCC 1, RMSE 1, MAE 1; arousal: CCC 0.4, PCC 1, RMSE sqrt(7.5), MAE 2.5
        "a": (np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]),
              np.array([[2.0, 2.0], [3.0, 4.0], [4.0, 6.0], [5.0, 8.0]])),
        # valence: perfect; arousal: only one annotated step -> skipped
        "b": (np.array([[0.0, nan], [1.0, 0.5], [2.0, nan]]), np.array([[0.0, 9.0], [1.0, 0.1], [2.0, 9.0]])),
    }
    rep = per_video_report(videos)
    assert rep["ccc_valence_per_video"] == pytest.approx((5 / 7 + 1.0) / 2)
    assert rep["pcc_valence_per_video"] == pytest.approx(1.0)
    assert rep["rmse_valence_per_video"] == pytest.approx(0.5)
    assert rep["mae_valence_per_video"] == pytest.approx(0.5)
    assert rep["ccc_arousal_per_video"] == pytest.approx(0.4)
    assert rep["rmse_arousal_per_video"] == pytest.approx(math.sqrt(7.5))
    assert rep["n_videos_valence"] == 2.0 and rep["n_videos_skipped_valence"] == 0.0
    assert rep["n_videos_arousal"] == 1.0 and rep["n_videos_skipped_arousal"] == 1.0
    assert rep["ccc_mean_per_video"] == pytest.approx(((5 / 7 + 1.0) / 2 + 0.4) / 2)
    assert all(isinstance(v, float) for v in rep.values())
    none_scored = per_video_report({"c": (np.array([[1.0], [nan]]), np.array([[1.0], [2.0]]))}, dims=("valence",))
    assert math.isnan(none_scored["ccc_valence_per_video"]) and none_scored["n_videos_skipped_valence"] == 1.0
    with pytest.raises(ValueError, match="empty"):
        per_video_report({})
    with pytest.raises(ValueError, match="video 'x'"):
        per_video_report({"x": (np.zeros((3, 2)), np.zeros((3, 3)))})
