"""Tests for trainables.objectives.postprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainables.objectives.metrics import ccc
from trainables.objectives.postprocess import (
    PostProcess,
    apply_time_delay,
    apply_time_delays,
    compute_stats,
    default_candidates,
    fit_time_delay,
    fit_time_delays,
    mean_filter,
    median_filter,
    moving_average,
    parse_candidate,
    scale_normalise,
    search_postprocess,
)


def _smooth_signal(n: int, seed: int, corr: int = 6) -> np.ndarray:
    """Zero-mean smooth random signal in roughly [-0.7, 0.7] (white noise through a box filter)."""
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.normal(size=n + 4 * corr), np.ones(corr) / corr, mode="same")[2 * corr : 2 * corr + n]
    return 0.7 * x / np.max(np.abs(x))


def _lagged(n: int, k: int, seed: int, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """(true, pred) with pred[i] = true[i + k] + noise: the predictions run k steps early."""
    base = _smooth_signal(n + 30, seed)
    true = base[15 : 15 + n]
    pred = base[15 + k : 15 + k + n] + noise * np.random.default_rng(seed + 1).normal(size=n)
    return true, pred


# --- time delay --------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, [1, 2, 3, 4, 5]),
        (1, [1, 1, 2, 3, 4]),
        (2, [1, 1, 1, 2, 3]),
        (-1, [2, 3, 4, 5, 5]),
        (-2, [3, 4, 5, 5, 5]),
        (5, [1, 1, 1, 1, 1]),
        (7, [1, 1, 1, 1, 1]),
        (-7, [5, 5, 5, 5, 5]),
    ],
)
def test_apply_time_delay_edge_padding_table(t: int, expected: list[int]) -> None:
    out = apply_time_delay(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), t)
    assert out.tolist() == [float(v) for v in expected]


def test_apply_time_delay_shapes() -> None:
    x = np.arange(12.0).reshape(6, 2)
    assert apply_time_delay(x, 1)[:, 1].tolist() == [1.0, 1.0, 3.0, 5.0, 7.0, 9.0]
    out = apply_time_delays(x, [1, -1])
    assert out[:, 0].tolist() == [0.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    assert out[:, 1].tolist() == [3.0, 5.0, 7.0, 9.0, 11.0, 11.0]
    assert apply_time_delay(np.zeros(0), 3).shape == (0,)
    with pytest.raises(ValueError, match="2 delays for D=3"):
        apply_time_delays(np.zeros((4, 3)), [0, 0])
    with pytest.raises(ValueError, match="integer"):
        apply_time_delay(x, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", range(-7, 8))
def test_fit_time_delay_recovers_planted_lag(k: int) -> None:
    true, pred = _lagged(400, k, seed=10 + k)
    assert fit_time_delay(pred, true, max_shift=10) == k
    # Applying the fitted shift gives the best CCC over every tried shift.
    best = ccc(true, apply_time_delay(pred, k))
    assert all(ccc(true, apply_time_delay(pred, t)) <= best for t in range(-10, 11))


def test_fit_time_delay_ignores_unannotated_steps_and_per_dim() -> None:
    t0, p0 = _lagged(300, 4, seed=1)
    t1, p1 = _lagged(300, -3, seed=2)
    true = np.stack([t0, t1], axis=1)
    true[:50, 0] = np.nan
    true[200:260, 1] = np.nan
    # Garbage in unannotated regions of the truth must not matter.
    assert fit_time_delays(np.stack([p0, p1], axis=1), true, max_shift=10) == (4, -3)


def test_fit_time_delay_ties_prefer_zero_and_errors() -> None:
    const_true = np.array([0.1, 0.5, -0.2, 0.3])
    assert fit_time_delay(np.full(4, 0.2), const_true, max_shift=3) == 0  # every shift scores 0
    with pytest.raises(ValueError, match="length mismatch"):
        fit_time_delay(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        fit_time_delay(np.array([0.0, np.nan, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 annotated"):
        fit_time_delay(np.arange(3.0), np.array([np.nan, np.nan, 1.0]))
    with pytest.raises(ValueError, match="max_shift"):
        fit_time_delay(np.arange(3.0), np.arange(3.0), max_shift=-1)


# --- smoothing and affine steps ------------------------------------------


def test_moving_average_and_median_hand_values() -> None:
    x = np.array([0.0, 3.0, 0.0, 9.0, 0.0])
    # Edge-padded: [0 | 0 3 0 9 0 | 0]
    assert moving_average(x, 3).tolist() == pytest.approx([1.0, 1.0, 4.0, 3.0, 3.0])
    assert median_filter(x, 3).tolist() == [0.0, 0.0, 3.0, 0.0, 0.0]
    # w=5: [0 0 | 0 3 0 9 0 | 0 0] -> 3/5, 12/5, 12/5, 12/5, 9/5
    assert moving_average(x, 5).tolist() == pytest.approx([0.6, 2.4, 2.4, 2.4, 1.8])
    assert moving_average(x, 1).tolist() == x.tolist()
    # Constants are preserved; longer window than the series is fine; columns independent.
    assert moving_average(np.full(3, 0.4), 15).tolist() == pytest.approx([0.4] * 3)
    two = np.stack([x, -x], axis=1)
    assert median_filter(two, 3)[:, 1].tolist() == [0.0, 0.0, -3.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="odd"):
        moving_average(x, 4)


def _padded_windows(x: np.ndarray, w: int) -> np.ndarray:
    """Reference: the edge-padded windows, one row per step (1-D series)."""
    h = w // 2
    ext = np.concatenate([np.repeat(x[:1], h), x, np.repeat(x[-1:], h)])
    return np.stack([ext[i:i + w] for i in range(len(x))])


def test_smoothing_edges_and_long_windows_match_the_padded_rule() -> None:
    """Edge outputs by hand, windows longer than the series, and agreement with np.mean / np.median over the
    edge-padded windows on a seeded series, per column of a (T, D) input and on a 1-D input."""
    x = np.array([5.0, 1.0, 2.0, 3.0, 9.0])
    # w=3: [5 | 5 1 2 3 9 | 9]: first (5+5+1)/3, last (3+9+9)/3; medians 5 and 9 (what replicate padding keeps)
    assert moving_average(x, 3).tolist() == pytest.approx([11 / 3, 8 / 3, 2.0, 14 / 3, 7.0], rel=1e-15)
    assert median_filter(x, 3).tolist() == [5.0, 2.0, 2.0, 3.0, 9.0]
    # w=7 over 5 steps: [5 5 5 | 5 1 2 3 9 | 9 9 9]
    assert moving_average(x, 7).tolist() == pytest.approx([26 / 7, 30 / 7, 34 / 7, 38 / 7, 6.0], rel=1e-15)
    assert median_filter(x, 7).tolist() == [5.0, 5.0, 5.0, 5.0, 9.0]
    assert median_filter(x[:1], 9).tolist() == [5.0] and moving_average(x[:0], 3).shape == (0,)

    rng = np.random.default_rng(0)
    y = np.round(rng.normal(size=(40, 2)), 1)  # rounded: ties in the medians
    for w in (3, 5, 9, 15, 61):
        for j in range(2):
            windows = _padded_windows(y[:, j], w)
            np.testing.assert_allclose(moving_average(y, w)[:, j], windows.mean(axis=1), rtol=0, atol=1e-14)
            np.testing.assert_array_equal(median_filter(y, w)[:, j], np.median(windows, axis=1))
            np.testing.assert_array_equal(median_filter(y[:, j], w), np.median(windows, axis=1))


def test_smoothing_keeps_non_finite_values_inside_their_windows() -> None:
    """A NaN or infinity reaches only the outputs whose window holds it; every other output is the finite one."""
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    mean3, med3 = moving_average(x, 3), median_filter(x, 3)
    assert np.isnan(mean3[1:4]).all() and np.isnan(med3[1:4]).all()
    assert mean3[[0, 4, 5, 8]].tolist() == pytest.approx([4 / 3, 5.0, 6.0, 26 / 3], rel=1e-15)
    assert med3[[0, 4, 5, 6, 7, 8]].tolist() == [1.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    inf = np.array([0.0, 1.0, 2.0, np.inf, 4.0, 5.0, 6.0, 7.0])
    assert moving_average(inf, 3).tolist() == pytest.approx([1 / 3, 1.0, np.inf, np.inf, np.inf, 5.0, 6.0, 20 / 3])
    assert median_filter(inf, 3).tolist() == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0, 6.0, 7.0]
    # the same per column of a (T, D) input
    both = np.stack([x, x[::-1]], axis=1)
    assert np.array_equal(median_filter(both, 3)[:, 1], med3[::-1], equal_nan=True)


def test_affine_steps_hand_values() -> None:
    y = np.array([[0.0, 1.0], [2.0, 3.0]])
    # scale: (y - pm)/ps * ls + lm with pm=(1, 2), ps=(1, 1), ls=(0.5, 0.2), lm=(0.1, -0.1)
    out = scale_normalise(y, [0.1, -0.1], [0.5, 0.2], [1.0, 2.0], [1.0, 1.0])
    np.testing.assert_allclose(out, [[-0.4, -0.3], [0.6, 0.1]])
    # zero prediction spread: factor 1, mean moved only
    assert scale_normalise(np.array([[0.3]]), [0.0], [0.5], [0.3], [0.0]).tolist() == [[0.0]]
    # mean filter as stated: y - label_mean + pred_mean
    np.testing.assert_allclose(mean_filter(y, [0.1, -0.1], [0.3, 0.2]), [[0.2, 1.3], [2.2, 3.3]])


def test_compute_stats() -> None:
    st = compute_stats({"a": np.array([[0.0, 1.0], [2.0, np.nan]]), "b": np.array([[4.0, 3.0]])})
    assert st["mean"] == pytest.approx([2.0, 2.0])
    assert st["std"] == pytest.approx([np.sqrt(8 / 3), 1.0])


# --- PostProcess and search ----------------------------------------------


def test_postprocess_round_trip_and_apply() -> None:
    pp = PostProcess(scale=True, smoothing="median", window=5, delay=(3, -2), label_mean=(0.1, 0.0),
                     label_std=(0.3, 0.2), pred_mean=(0.05, 0.1), pred_std=(0.25, 0.4), dims=("valence", "arousal"))
    rec = json.loads(json.dumps(pp.to_dict()))  # survives a JSON artifact
    assert rec["name"] == "scale+median5+delay"
    back = PostProcess.from_dict(rec)
    assert back == pp
    x = np.random.default_rng(0).normal(size=(40, 2))
    np.testing.assert_array_equal(back.apply(x), pp.apply(x))
    manual = apply_time_delays(median_filter(scale_normalise(x, pp.label_mean, pp.label_std, pp.pred_mean,
                                                             pp.pred_std), 5), (3, -2))
    np.testing.assert_allclose(pp.apply(x), manual)
    assert PostProcess().name == "none"
    np.testing.assert_array_equal(PostProcess().apply(x), x)
    assert PostProcess.from_dict(PostProcess().to_dict()) == PostProcess()
    with pytest.raises(ValueError, match="unknown PostProcess keys"):
        PostProcess.from_dict({"windw": 3})
    with pytest.raises(ValueError, match="needs label_mean"):
        PostProcess(scale=True)
    with pytest.raises(ValueError, match="D=2"):
        pp.apply(np.zeros((5, 3)))


def test_candidates() -> None:
    cands = default_candidates()
    assert cands[0] == "none" and len(cands) == 54 and len(set(cands)) == 54
    assert {"delay", "median15", "scale+movavg3+delay", "meanfilter+delay"} <= set(cands)
    assert parse_candidate("delay+median9") == {"scale": False, "mean_filter": False, "smoothing": "median",
                                                "window": 9, "delay": True}
    for bad in ("delay+delay", "median4", "smooth3", "movavg3+median5"):
        with pytest.raises(ValueError):
            parse_candidate(bad)


def _videos(lags: tuple[int, int], noise: float, n_videos: int = 4, length: int = 250):
    preds, trues = {}, {}
    for v in range(n_videos):
        cols_t, cols_p = [], []
        for j, k in enumerate(lags):
            t, p = _lagged(length, k, seed=100 * v + j, noise=noise)
            cols_t.append(t)
            cols_p.append(p)
        trues[f"vid{v}"] = np.stack(cols_t, axis=1)
        preds[f"vid{v}"] = np.stack(cols_p, axis=1)
    return preds, trues


def test_search_picks_planted_delay() -> None:
    preds, trues = _videos((4, -3), noise=0.02)
    trues["vid0"][:30, 0] = np.nan  # unannotated steps are excluded
    stats = compute_stats(trues)
    pp, metrics = search_postprocess(preds, trues, stats)
    assert pp.delay == (4, -3)
    assert metrics["ccc_mean"] > 0.95 > metrics["ccc_mean_before"]
    assert metrics["postprocess_gain"] == pytest.approx(metrics["ccc_mean"] - metrics["ccc_mean_before"])
    assert {"ccc_valence", "mape_arousal", "ccc_valence_per_video", "n_videos_arousal"} <= set(metrics)
    # The recorded pipeline reproduces the reported metric when applied again.
    again = PostProcess.from_dict(pp.to_dict()).apply_videos(preds)
    cat_t = np.concatenate(list(trues.values()))
    cat_p = np.concatenate(list(again.values()))
    keep = ~np.isnan(cat_t[:, 0])
    assert ccc(cat_t[keep, 0], cat_p[keep, 0]) == pytest.approx(metrics["ccc_valence"])


def test_search_keeps_none_when_already_optimal() -> None:
    _, trues = _videos((0, 0), noise=0.0)
    preds = {k: v.copy() for k, v in trues.items()}
    pp, metrics = search_postprocess(preds, trues, compute_stats(trues))
    assert pp.name == "none" and pp.delay is None
    assert metrics["ccc_mean"] == pytest.approx(1.0) and metrics["postprocess_gain"] == pytest.approx(0.0)
    np.testing.assert_array_equal(pp.apply(preds["vid1"]), preds["vid1"])


def test_search_restricted_candidates_and_errors() -> None:
    preds, trues = _videos((2, 2), noise=0.02, n_videos=2, length=120)
    pp, _ = search_postprocess(preds, trues, None, candidates=["none", "movavg3"])
    assert pp.delay is None
    pp, _ = search_postprocess(preds, trues, None)  # no stats: affine candidates are skipped
    assert not pp.scale and not pp.mean_filter and pp.delay == (2, 2)
    with pytest.raises(ValueError, match="need train_label_stats"):
        search_postprocess(preds, trues, None, candidates=["scale"])
    with pytest.raises(ValueError, match="same videos"):
        search_postprocess(preds, {"vid0": trues["vid0"]}, None)
    bad = dict(preds)
    bad["vid1"] = bad["vid1"].copy()
    bad["vid1"][3, 0] = np.nan
    with pytest.raises(ValueError, match="'vid1'.*finite"):
        search_postprocess(bad, trues, None)
