"""Tests for trainables.data.labels: the label scale and the label step -> frame rule, which prepare (the cache's
``label_frames``) and trials (``VideoView.label_pos``) share."""
from __future__ import annotations

import numpy as np
import pytest

from trainables.data.cache import CachedVideo
from trainables.data.clips import VideoView
from trainables.data.labels import from_unit, label_frame_index, nearest_label_step, to_unit
from trainables.objectives.metrics import to_native


def test_label_frame_index_nearest_and_clipped():
    times = np.array([-0.5, 0.0, 0.019, 0.02, 0.021, 0.5, 1.5, 3.96, 100.0])
    np.testing.assert_array_equal(label_frame_index(times, 25, 100), [0, 0, 0, 1, 1, 13, 38, 99, 99])
    idx = label_frame_index(np.arange(250) / 25.0, 25, 250)
    assert idx.dtype == np.int64 and np.array_equal(idx, np.arange(250))
    # 30 fps labels on a 15 fps video: 0.5 frame ties go to the later frame
    np.testing.assert_array_equal(label_frame_index(np.arange(4) / 30.0, 15, 10), [0, 1, 1, 2])
    for bad in [dict(fps=0), dict(num_frames=0)]:
        kw = {"fps": 25, "num_frames": 5, **bad}
        with pytest.raises(ValueError):
            label_frame_index(np.array([0.0]), **kw)
    with pytest.raises(ValueError, match="finite"):
        label_frame_index(np.array([np.nan]), 25, 5)


@pytest.mark.parametrize(("time", "fps", "expected"), [
    (0.5, 25, 13),    # the centre of second 0 at 25 fps: frame 12.5 -> the later frame 13
    (1.5, 25, 38),    # 37.5 -> 38
    (0.02, 50, 1),    # exactly on frame 1: no tie
    (0.05, 10, 1),    # 0.5 -> 1 (round-half-to-even would give 0)
    (0.15, 10, 2),    # 1.5 -> 2 (the same under both rules)
    (0.25, 10, 3),    # 2.5 -> 3 (round-half-to-even would give 2)
    (1 / 60, 30, 1),  # half a frame computed in floating point (0.49999... frames) still counts as the tie
    (0.049, 10, 0),   # just before the tie: the earlier frame
    (0.051, 10, 1),   # just after it: the later frame
])
def test_label_half_way_between_two_frames_goes_to_the_later_frame(time, fps, expected):
    assert label_frame_index(np.array([time]), fps, 100).tolist() == [expected]


def test_every_tie_goes_later_whatever_the_parity():
    k = np.arange(20)
    np.testing.assert_array_equal(label_frame_index((k + 0.5) / 25.0, 25, 100), k + 1)


def _video(num_frames: int, fps: float, label_times: np.ndarray | None) -> CachedVideo:
    return CachedVideo("v", np.zeros((num_frames, 4, 4, 3), np.uint8), np.ones(num_frames, bool),
                       np.ones(num_frames, np.float32), np.zeros((num_frames, 2), np.float32), {"fps": fps},
                       label_times=label_times)


def test_trial_grid_uses_the_same_rule_with_or_without_label_times():
    """A 20 fps entry viewed at 10 fps: label step k (at k / 20 s) is at grid position k / 2, a tie for every odd k."""
    expected = np.minimum((np.arange(40) + 1) // 2, 19)  # 0, 1, 1, 2, 2, ... (the later frame on every tie)
    without_times = VideoView(_video(40, 20.0, None), 10.0)
    with_times = VideoView(_video(40, 20.0, np.arange(40) / 20.0), 10.0)
    assert len(without_times) == 20
    np.testing.assert_array_equal(without_times.label_pos, expected)
    np.testing.assert_array_equal(with_times.label_pos, expected)
    np.testing.assert_array_equal(without_times.label_pos, label_frame_index(np.arange(40) / 20.0, 10.0, 20))


@pytest.mark.parametrize("scale", [(-10.0, 10.0), (0.0, 10.0), (1.0, 9.0), (-1.0, 1.0)])
def test_rescale_round_trip_and_native_metrics_agree(scale):
    native = np.array([scale[0], (scale[0] + scale[1]) / 2, scale[1], np.nan])
    unit = to_unit(native, scale)
    np.testing.assert_array_equal(unit[:3], [-1.0, 0.0, 1.0])
    assert np.isnan(unit[3])
    np.testing.assert_allclose(from_unit(unit, scale), native, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(to_native(unit, *scale), from_unit(unit, scale))  # the metric's map is this one
    assert to_unit(np.array([0.25]), (-1.0, 1.0)).tolist() == [0.25]  # identity on [-1, 1]


# ---------------------------------------------------------------------------
# frame -> label step (per-frame targets)
# ---------------------------------------------------------------------------

def test_a_frame_half_way_between_two_label_steps_takes_the_later():
    # per-second labels timed at the centres 0.5, 1.5, 2.5 s; frames every 0.5 s from 0 to 4 s
    steps = np.array([0.5, 1.5, 2.5])
    pick = nearest_label_step(np.arange(9) * 0.5, steps, max_distance=1.0)
    # 1.0 s ties between 0.5 and 1.5 -> 1.5 (that frame is in second [1, 2)); 2.0 s -> 2.5; 3.5 s is exactly one
    # period after the last step -> still it; 4.0 s is further -> none
    np.testing.assert_array_equal(pick, [0, 0, 1, 1, 2, 2, 2, 2, -1])
    # on frame positions too (a trial's grid), whatever the parity of the positions
    np.testing.assert_array_equal(nearest_label_step(np.arange(7), np.array([0, 2, 4, 6]), 2.0), [0, 1, 1, 2, 2, 3, 3])


def test_same_rate_is_the_identity_and_denser_labels_take_the_last_on_a_frame():
    np.testing.assert_array_equal(nearest_label_step(np.arange(10), np.arange(10), 1.0), np.arange(10))
    # two steps land on frame 1 (labels denser than frames): the frame takes the later one
    np.testing.assert_array_equal(nearest_label_step(np.array([0, 1, 2]), np.array([0, 1, 1, 2]), 1.0), [0, 2, 3])
    assert nearest_label_step(np.arange(3), np.array([]), 1.0).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="sorted"):
        nearest_label_step(np.arange(3), np.array([2.0, 1.0]), 1.0)


def test_sparse_labels_on_denser_frames():
    # SEWA-like labels every 100 ms at 0.1, 0.2, 0.3 s; frames every 50 ms
    pick = nearest_label_step(np.arange(10) * 0.05, np.array([0.1, 0.2, 0.3]), max_distance=0.1)
    np.testing.assert_array_equal(pick, [0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
