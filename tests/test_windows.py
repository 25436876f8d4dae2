"""Tests for trainables.data.windows (hand-computed tables + properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data.windows import (
    FUSION_MODES,
    coverage_mean,
    dense_window_starts,
    fuse_labels,
    window_starts,
    window_step,
)

NAN = float("nan")

# (num_frames, length, overlap) -> expected starts, all computed by hand from
# step = max(1, round(length * (1 - overlap))), starts while start + length <= num_frames.
STARTS_TABLE = [
    # step 8; last start 80 (88 + 16 = 104 > 100) -> 11 windows
    ((100, 16, 0.5), [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80]),
    ((16, 16, 0.5), [0]),
    ((15, 16, 0.5), []),
    ((10, 4, 0.0), [0, 4]),  # 8 + 4 = 12 > 10
    # 32 * 0.2 = 6.4 -> step 6; last start 66 (72 + 32 = 104 > 100) -> 12 windows
    ((100, 32, 0.8), [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66]),
    ((10, 5, 0.5), [0, 2, 4]),  # 2.5 -> 2 (round half to even); 6 + 5 > 10
    ((20, 6, 0.25), [0, 4, 8, 12]),  # 4.5 -> 4 (half to even); 16 + 6 > 20
    ((10, 3, 0.9), [0, 1, 2, 3, 4, 5, 6, 7]),  # round(0.3) = 0 -> step clamped to 1
    ((12, 4, 0.0), [0, 4, 8]),  # exact tiling
    ((5, 1, 0.0), [0, 1, 2, 3, 4]),
    ((0, 4, 0.5), []),
]

DENSE_TABLE = [
    ((100, 16, 0.5), [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 84]),  # + 100 - 16
    ((16, 16, 0.5), [0]),
    ((15, 16, 0.5), []),  # too short: cannot be evaluated with length 16
    ((10, 4, 0.0), [0, 4, 6]),
    ((100, 32, 0.8), [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66, 68]),
    ((10, 5, 0.5), [0, 2, 4, 5]),
    ((20, 6, 0.25), [0, 4, 8, 12, 14]),
    ((10, 3, 0.9), [0, 1, 2, 3, 4, 5, 6, 7]),  # already reaches the end
    ((12, 4, 0.0), [0, 4, 8]),  # already reaches the end
]


@pytest.mark.parametrize(("args", "expected"), STARTS_TABLE)
def test_window_starts_table(args: tuple[int, int, float], expected: list[int]) -> None:
    got = window_starts(*args)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize(("args", "expected"), DENSE_TABLE)
def test_dense_window_starts_table(args: tuple[int, int, float], expected: list[int]) -> None:
    got = dense_window_starts(*args)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int64))


def test_window_step_values() -> None:
    assert window_step(16, 0.5) == 8
    assert window_step(32, 0.8) == 6
    assert window_step(5, 0.5) == 2
    assert window_step(7, 0.5) == 4  # 3.5 -> 4 (half to even)
    assert window_step(1, 0.99) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 0, 0.5), "length must be >= 1"),
        ((10, 4, 1.0), r"overlap must be in \[0, 1\)"),
        ((10, 4, -0.1), r"overlap must be in \[0, 1\)"),
        ((10, 4, NAN), r"overlap must be in \[0, 1\)"),
        ((-1, 4, 0.5), "num_frames must be >= 0"),
        ((10, 4.0, 0.5), "length must be an integer"),
    ],
)
@pytest.mark.parametrize("fn", [window_starts, dense_window_starts])
def test_window_starts_invalid(fn, args: tuple, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        fn(*args)


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(
    num_frames=st.integers(0, 400),
    length=st.integers(1, 64),
    overlap=st.floats(0.0, 0.99, allow_nan=False),
)
def test_dense_covers_every_frame(num_frames: int, length: int, overlap: float) -> None:
    starts = dense_window_starts(num_frames, length, overlap)
    regular = window_starts(num_frames, length, overlap)
    if num_frames < length:
        assert starts.size == 0 and regular.size == 0
        return
    assert starts[0] == 0 and starts[-1] + length == num_frames
    assert np.all(np.diff(starts) > 0)  # sorted, unique
    assert np.all(starts >= 0) and np.all(starts + length <= num_frames)
    covered = np.zeros(num_frames, dtype=bool)
    for s in starts:
        covered[s : s + length] = True
    assert covered.all()
    # The regular starts are a prefix; at most one start is added.
    np.testing.assert_array_equal(starts[: regular.size], regular)
    assert starts.size - regular.size in (0, 1)
    assert np.all(np.diff(regular) == window_step(length, overlap))


# --- fuse_labels ------------------------------------------------------------

SERIES = [[0.1], [-0.7], [0.5]]  # one dimension, L = 3

FUSION_TABLE = [
    (SERIES, "mean", [-0.1 / 3]),
    (SERIES, "extremum", [-0.7]),  # largest |v|, sign kept
    (SERIES, "median", [0.1]),
    (SERIES, "center", [-0.7]),  # index 3 // 2 = 1
    (SERIES, "last", [0.5]),
    ([[0.5], [-0.5]], "extremum", [0.5]),  # tie -> first
    ([[-0.5], [0.5]], "extremum", [-0.5]),  # tie -> first
    ([[0.2], [0.4], [0.6], [0.9]], "median", [0.5]),  # even count: mean of middle two
    ([[0.2], [0.4], [0.6], [0.9]], "center", [0.6]),  # index 4 // 2 = 2
    # NaN rows ignored
    ([[0.2], [NAN], [0.6], [NAN]], "mean", [0.4]),
    ([[0.2], [NAN], [0.6], [NAN]], "extremum", [0.6]),
    ([[0.2], [NAN], [0.6], [NAN]], "median", [0.4]),
    ([[0.2], [NAN], [0.6], [NAN]], "center", [0.6]),
    ([[0.2], [NAN], [0.6], [NAN]], "last", [0.6]),  # last annotated row
    ([[0.2], [0.3], [NAN], [0.8]], "center", [0.3]),  # centre NaN: nearest, earlier on tie
    ([[0.2], [NAN], [NAN], [0.8], [0.1]], "center", [0.8]),  # centre 2 NaN: nearest is 3
    # two dimensions, NaN handled per dimension
    ([[0.1, NAN], [-0.3, 0.4], [0.2, -0.9]], "extremum", [-0.3, -0.9]),
    ([[0.1, NAN], [-0.3, 0.4], [0.2, -0.9]], "mean", [0.0, -0.25]),
    ([[0.1, NAN], [-0.3, 0.4], [0.2, NAN]], "last", [0.2, 0.4]),
]


@pytest.mark.parametrize(("labels", "mode", "expected"), FUSION_TABLE)
def test_fuse_labels_table(labels: list[list[float]], mode: str, expected: list[float]) -> None:
    got = fuse_labels(np.array(labels), mode)
    assert got.shape == (len(expected),)
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fuse_labels_all_nan_dimension_gives_nan(mode: str) -> None:
    labels = np.array([[NAN, 0.3], [NAN, 0.3]])
    with np.errstate(all="raise"):  # no hidden warnings from nan-reductions
        got = fuse_labels(labels, mode)
    assert np.isnan(got[0]) and got[1] == pytest.approx(0.3)


def test_fuse_labels_errors() -> None:
    with pytest.raises(ValueError, match="allowed: mean, extremum, median, center, last"):
        fuse_labels(np.zeros((3, 2)), "max")
    with pytest.raises(ValueError, match=r"shape \(L, D\)"):
        fuse_labels(np.zeros(3))
    with pytest.raises(ValueError, match="at least one row"):
        fuse_labels(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="infinite"):
        fuse_labels(np.array([[np.inf]]))


def test_fusion_modes_constant() -> None:
    assert FUSION_MODES == ("mean", "extremum", "median", "center", "last")


# --- coverage_mean ----------------------------------------------------------


def test_coverage_mean_window_level_exact() -> None:
    # windows [0, 3) -> 1.0 and [2, 5) -> 3.0 over 6 frames; frame 5 uncovered
    got = coverage_mean(6, np.array([0, 2]), 3, np.array([[1.0], [3.0]]))
    np.testing.assert_array_equal(got, np.array([[1.0], [1.0], [2.0], [3.0], [3.0], [NAN]]))


def test_coverage_mean_per_frame_exact() -> None:
    preds = np.array([[[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]], [[10.0, 0.0], [20.0, 0.0], [30.0, 0.0]]])
    got = coverage_mean(6, [0, 2], 3, preds)
    expected = np.array(
        [
            [1.0, -1.0],
            [2.0, -2.0],
            [6.5, -1.5],  # (3 + 10) / 2, (-3 + 0) / 2
            [20.0, 0.0],
            [30.0, 0.0],
            [NAN, NAN],
        ]
    )
    np.testing.assert_array_equal(got, expected)


def test_coverage_mean_edge_cases() -> None:
    empty = coverage_mean(4, np.array([], dtype=np.int64), 2, np.zeros((0, 2)))
    assert empty.shape == (4, 2) and np.isnan(empty).all()
    assert coverage_mean(0, [], 3, np.zeros((0, 1))).shape == (0, 1)


def test_coverage_mean_errors() -> None:
    with pytest.raises(ValueError, match="inside"):
        coverage_mean(5, [3], 3, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="inside"):
        coverage_mean(5, [-1], 3, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="2 starts but 1"):
        coverage_mean(10, [0, 2], 3, np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\(W, 3, D\)"):
        coverage_mean(10, [0], 3, np.zeros((1, 4, 2)))
    with pytest.raises(ValueError, match="integers"):
        coverage_mean(10, [0.5], 3, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        coverage_mean(10, [0], 3, np.zeros(1))


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(
    num_frames=st.integers(1, 120),
    length=st.integers(1, 20),
    overlap=st.floats(0.0, 0.9, allow_nan=False),
    per_frame=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_coverage_mean_matches_loop(num_frames: int, length: int, overlap: float, per_frame: bool, seed: int) -> None:
    starts = dense_window_starts(num_frames, length, overlap)
    rng = np.random.default_rng(seed)
    shape = (starts.size, length, 2) if per_frame else (starts.size, 2)
    preds = rng.normal(size=shape)
    got = coverage_mean(num_frames, starts, length, preds)
    # Reference: explicit loop over windows and frames.
    sums = np.zeros((num_frames, 2))
    counts = np.zeros(num_frames)
    for w, s in enumerate(starts):
        for k in range(length):
            sums[s + k] += preds[w, k] if per_frame else preds[w]
            counts[s + k] += 1
    expected = np.full((num_frames, 2), NAN)
    expected[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    if starts.size:  # dense windows leave no gap
        assert not np.isnan(got).any()
