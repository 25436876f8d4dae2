"""Tests for trainables.data.sampling (SSTS and simple samplers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data.sampling import (
    SAMPLERS,
    consecutive_indices,
    get_sampler,
    ssts_indices,
    ssts_views,
    uniform_indices,
)

HYP = settings(derandomize=True, database=None, deadline=None, max_examples=200)

# stride -> number of frames SSTS keeps out of clip_len = 24 (24 / stride; all divide 24)
SSTS_LENGTHS = [(1, 24), (2, 12), (3, 8), (4, 6), (6, 4), (8, 3), (12, 2)]


@pytest.mark.parametrize(("stride", "expected_len"), SSTS_LENGTHS)
@pytest.mark.parametrize("stochastic", [True, False])
def test_ssts_output_length_table(stride: int, expected_len: int, stochastic: bool) -> None:
    for seed in range(20):
        idx = ssts_indices(100, stride, np.random.default_rng(seed), clip_len=24, stochastic=stochastic)
        assert idx.shape == (expected_len,)
        assert idx.dtype == np.int64


@HYP
@given(
    num_frames=st.integers(24, 500),
    stride=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_ssts_properties(num_frames: int, stride: int, seed: int) -> None:
    idx = ssts_indices(num_frames, stride, np.random.default_rng(seed))
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx.min() >= 0 and idx.max() < num_frames
    assert len(idx) in {len(range(i, 24, stride)) for i in range(stride)}


@HYP
@given(clip_len=st.integers(1, 64), data=st.data())
def test_ssts_properties_other_clip_lengths(clip_len: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, clip_len))
    num_frames = data.draw(st.integers(clip_len, clip_len + 200))
    idx = ssts_indices(num_frames, stride, np.random.default_rng(data.draw(st.integers(0, 1000))), clip_len=clip_len)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < num_frames
    assert len(idx) in {len(range(i, clip_len, stride)) for i in range(stride)}


def test_ssts_non_divisor_stride_lengths() -> None:
    # stride 5 at clip_len 24: offsets 0..3 keep 5 frames, offset 4 keeps 4
    seen = {len(ssts_indices(50, 5, np.random.default_rng(seed))) for seed in range(200)}
    assert seen == {4, 5}


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5, 6, 8, 12, 24])
def test_ssts_not_stochastic(stride: int) -> None:
    idx = ssts_indices(1000, stride, None, stochastic=False)
    np.testing.assert_array_equal(idx, np.arange(0, 24, stride))
    # rng is ignored when given
    np.testing.assert_array_equal(ssts_indices(1000, stride, np.random.default_rng(3), stochastic=False), idx)


def test_ssts_uses_the_whole_video() -> None:
    # Over many draws, frames from the whole range (not just the start) are selected.
    rng = np.random.default_rng(0)
    picked = np.concatenate([ssts_indices(300, 1, rng) for _ in range(50)])
    assert picked.min() < 10 and picked.max() > 290


def test_ssts_exact_draw_when_video_equals_clip() -> None:
    # num_frames == clip_len: the draw is every frame, so views are exact strided slices.
    idx = ssts_indices(24, 4, np.random.default_rng(1))
    offset = int(idx[0])
    np.testing.assert_array_equal(idx, np.arange(offset, 24, 4))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((23, 2), {}, "num_frames=23 .* clip_len=24"),
        ((5, 2), {"clip_len": 8}, "num_frames=5 .* clip_len=8"),
        ((100, 0), {}, "stride must be >= 1"),
        ((100, 25), {}, r"stride must be in \[1, clip_len=24\]"),
        ((100, 2), {"clip_len": 0}, "clip_len must be >= 1"),
        ((100, 2.0), {}, "stride must be an integer"),
    ],
)
@pytest.mark.parametrize("fn", [ssts_indices, ssts_views])
def test_ssts_invalid(fn, args: tuple, kwargs: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        fn(*args, np.random.default_rng(0), **kwargs)


def test_ssts_requires_rng_when_stochastic() -> None:
    with pytest.raises(ValueError, match="Generator"):
        ssts_indices(100, 2, None)


@HYP
@given(num_frames=st.integers(24, 300), stride=st.integers(1, 24), seed=st.integers(0, 2**32 - 1))
def test_ssts_views_partition_one_draw(num_frames: int, stride: int, seed: int) -> None:
    views = ssts_views(num_frames, stride, np.random.default_rng(seed))
    assert len(views) == stride
    union = np.concatenate(views)
    assert union.size == 24 and np.unique(union).size == 24  # disjoint, 24 frames in total
    draw = np.sort(union)
    for k, view in enumerate(views):
        np.testing.assert_array_equal(view, draw[k::stride])
    assert draw.min() >= 0 and draw.max() < num_frames


def test_ssts_views_draw_matches_ssts_indices() -> None:
    # Same seed: ssts_indices' output is one of the views of the same draw.
    idx = ssts_indices(200, 4, np.random.default_rng(11))
    views = ssts_views(200, 4, np.random.default_rng(11))
    assert any(np.array_equal(idx, v) for v in views)


def test_ssts_views_not_stochastic() -> None:
    views = ssts_views(100, 3, None, stochastic=False)
    assert [v.tolist() for v in views] == [list(range(k, 24, 3)) for k in range(3)]


def test_same_seed_same_output() -> None:
    for stride in (1, 3, 5, 8):
        a = ssts_indices(500, stride, np.random.default_rng(42))
        b = ssts_indices(500, stride, np.random.default_rng(42))
        np.testing.assert_array_equal(a, b)
        va = ssts_views(500, stride, np.random.default_rng(42))
        vb = ssts_views(500, stride, np.random.default_rng(42))
        assert all(np.array_equal(x, y) for x, y in zip(va, vb, strict=True))
    np.testing.assert_array_equal(
        consecutive_indices(500, 16, np.random.default_rng(7)),
        consecutive_indices(500, 16, np.random.default_rng(7)),
    )


# --- uniform / consecutive ---------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "count", "expected"),
    [
        (10, 5, [0, 2, 4, 7, 9]),  # linspace 0, 2.25, 4.5, 6.75, 9 -> rint (4.5 -> 4)
        (10, 10, list(range(10))),
        (10, 1, [0]),
        (101, 5, [0, 25, 50, 75, 100]),
        (7, 2, [0, 6]),
    ],
)
def test_uniform_indices_table(num_frames: int, count: int, expected: list[int]) -> None:
    got = uniform_indices(num_frames, count)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@HYP
@given(num_frames=st.integers(1, 1000), data=st.data())
def test_uniform_indices_properties(num_frames: int, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, num_frames))
    idx = uniform_indices(num_frames, count)
    assert idx.size == count and np.all(np.diff(idx) > 0)
    assert idx[0] == 0 and idx[-1] == (num_frames - 1 if count > 1 else 0)


@HYP
@given(num_frames=st.integers(1, 500), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_consecutive_indices_properties(num_frames: int, data: st.DataObject, seed: int) -> None:
    count = data.draw(st.integers(1, num_frames))
    idx = consecutive_indices(num_frames, count, np.random.default_rng(seed))
    assert idx.size == count and np.all(np.diff(idx) == 1)
    assert idx[0] >= 0 and idx[-1] < num_frames
    np.testing.assert_array_equal(consecutive_indices(num_frames, count, None, stochastic=False), np.arange(count))


def test_simple_samplers_invalid() -> None:
    with pytest.raises(ValueError, match="num_frames=4 .* count=5"):
        uniform_indices(4, 5)
    with pytest.raises(ValueError, match="num_frames=4 .* count=5"):
        consecutive_indices(4, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="count must be >= 1"):
        uniform_indices(4, 0)
    with pytest.raises(ValueError, match="Generator"):
        consecutive_indices(10, 5, None)


# --- registry -------------------------------------------------------------


def test_registry() -> None:
    assert set(SAMPLERS) == {"ssts", "uniform", "consecutive"}
    assert get_sampler("ssts") is ssts_indices
    assert get_sampler("uniform") is uniform_indices
    assert get_sampler("consecutive") is consecutive_indices
    with pytest.raises(ValueError, match="valid names: consecutive, ssts, uniform"):
        get_sampler("random")
