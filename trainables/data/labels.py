"""The two label conventions of the cache, written once: the scale labels are stored on and where a label step lands
among the frames.

* **Scale.** Every dataset's labels are stored rescaled to [-1, 1] (:func:`to_unit`), with the native ``(low, high)``
  kept in the entry's metadata so metrics can also be reported on the dataset's own scale (:func:`from_unit`).
* **Label step -> frame.** A label step at time ``t`` belongs to the frame nearest in time (:func:`label_frame_index`);
  the cache stores this for its own frames (``label_frames.npy``) and a trial recomputes it for the grid it views the
  cache at.
* **Frame -> label step** (per-frame targets): a frame takes its nearest label step (:func:`nearest_label_step`).

Both directions break a tie the same way: towards the **later** frame or step.

Prepare-time code (adapters, the cache writer, the synthetic data) and trial-time code (clips, metrics) both import
from here.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["UNIT_SCALE", "check_fps_frames", "from_unit", "label_frame_index", "nearest_label_step", "to_unit"]

#: The scale labels are trained and stored on.
UNIT_SCALE: tuple[float, float] = (-1.0, 1.0)


def to_unit(native: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Rescale values on a native scale ``(low, high)`` onto [-1, 1].

    Formula (centre / half-width, so a [-1, 1] scale is the identity, exactly)::

        y = (x - (low + high) / 2) / ((high - low) / 2)

    Args:
        native: any array (or scalar); NaN stays NaN, values outside the scale map linearly outside [-1, 1].
        scale: ``(low, high)`` with ``low < high``.

    Returns:
        float64 array of the same shape.
    """
    low, high = scale
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    return (np.asarray(native, dtype=np.float64) - centre) / half


def from_unit(values: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`to_unit`: map values on [-1, 1] onto the native scale ``(low, high)``.

    Formula: ``x = y * (high - low) / 2 + (low + high) / 2``. NaN stays NaN; values outside [-1, 1] (e.g. unclipped
    predictions) map linearly outside the scale.

    Returns:
        float64 array of the same shape as ``values``.
    """
    low, high = scale
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    return np.asarray(values, dtype=np.float64) * half + centre


def check_fps_frames(fps: float, num_frames: int, fn: str) -> None:
    """Validate a (frame rate, frame count) pair; ``fn`` names the caller in the message.

    Raises:
        ValueError: fps not a positive finite number, or num_frames not an integer >= 1.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{fn}: fps must be a positive finite number; got {fps!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"{fn}: num_frames must be an integer >= 1; got {num_frames!r}")


def label_frame_index(times: np.ndarray, fps: float, num_frames: int) -> np.ndarray:
    """Index of the frame nearest each label time, frame ``k`` being shown at ``k / fps``.

    Rule: ``k = floor(t * fps + 1/2)``, clipped to ``[0, num_frames - 1]``. So frame ``k`` owns the half-open interval
    of times ``[(k - 1/2) / fps, (k + 1/2) / fps)``, and a label exactly half-way between two frames goes to the
    **later** frame. Why half-open intervals (round half up) rather than NumPy's round-half-to-even: the choice must
    not depend on the parity of the frame number (ties-to-even sends 0.5 -> 0 but 1.5 -> 2, so evenly spaced labels
    land on unevenly spaced frames), and every other interval in the project is closed on the left and open on the
    right (a per-second label covers [s, s + 1); a frame at exactly 1.0 s belongs to second 1). E.g. per-second labels
    timed at the centres 0.5, 1.5, ... s on a 25 fps video land on frames 13, 38, ... (12.5 -> 13, 37.5 -> 38).

    A tiny tolerance (1e-9 frame) absorbs ``k / fps * fps`` landing an ulp below an integer + 1/2, so a time computed
    as a half-frame is treated as the tie it is. Times before the first or after the last frame are clipped to frame 0
    / ``num_frames - 1``; callers that must not reuse an edge frame compare ``times`` with ``num_frames / fps``
    themselves.

    Args:
        times: (L,) seconds, finite.
        fps: frame rate of the frames indexed, > 0.
        num_frames: number of frames, >= 1.

    Returns:
        (L,) int64 frame indices in ``[0, num_frames - 1]``.

    Raises:
        ValueError: non-finite times, fps <= 0 or num_frames < 1.
    """
    check_fps_frames(fps, num_frames, "label_frame_index")
    times = np.asarray(times, dtype=np.float64)
    if not np.isfinite(times).all():
        raise ValueError("label_frame_index: times must be finite")
    idx = np.floor(times * fps + 0.5 + 1e-9).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def nearest_label_step(points: np.ndarray, steps: np.ndarray, max_distance: float) -> np.ndarray:
    """Index of the label step nearest each point (a frame), or -1 where the nearest is more than ``max_distance``
    away, so a video longer than its labels is not padded with invented targets.

    ``points`` and ``steps`` lie on one axis (seconds, or frame positions). Rule: a point exactly half-way between two
    steps takes the **later** step, as :func:`label_frame_index` sends a half-way label to the later frame (intervals
    closed on the left: a frame at exactly 1.0 s between per-second labels timed at 0.5 s and 1.5 s belongs to second
    [1, 2)). A point on which several steps land (labels denser than the frames) takes the last of them.

    Args:
        points: (N,) positions to label.
        steps: (L,) positions of the label steps, sorted ascending.
        max_distance: the farthest a step may be (inclusive; typically one label period).

    Returns:
        (N,) int64 indices into ``steps``; -1 = no step near enough (or no steps).
    """
    points, steps = np.asarray(points, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    out = np.full(points.shape, -1, dtype=np.int64)
    if not len(steps):
        return out
    if len(steps) > 1 and (np.diff(steps) < 0).any():
        raise ValueError("nearest_label_step: steps must be sorted ascending")
    after = np.searchsorted(steps, points, side="right")
    left = np.clip(after - 1, 0, len(steps) - 1)  # the last step at or before the point
    right = np.clip(after, 0, len(steps) - 1)  # the first step after it
    eps = 1e-9  # a half-way point computed in floating point is still a tie
    d_left, d_right = np.abs(points - steps[left]), np.abs(steps[right] - points)
    nearest = np.where(d_right <= d_left + eps, right, left)
    near = np.abs(steps[nearest] - points) <= max_distance + eps
    out[near] = nearest[near]
    return out
