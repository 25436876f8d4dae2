"""Temporal windowing of per-frame sequences and the inverse mapping.

A video of ``num_frames`` frames is cut into windows of ``length`` frames
whose consecutive starts are ``step`` frames apart, with::

    step = max(1, round(length * (1 - overlap)))

(Python's built-in ``round``, i.e. round-half-to-even: ``length=5``,
``overlap=0.5`` gives ``2.5 -> 2``; ``length=32``, ``overlap=0.8`` gives
``6.4 -> 6``.)

* :func:`window_starts` - training windows, only those fully inside the video;
* :func:`dense_window_starts` - evaluation windows, plus one final window
  aligned to the end so that every frame is covered;
* :func:`fuse_labels` - collapse a window's per-frame labels into one target;
* :func:`coverage_mean` - spread window-level predictions back onto the
  per-frame timeline by averaging the overlapping windows.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trainables.checks import check_int as _check_int
from trainables.names import FUSIONS

__all__ = [
    "FUSION_MODES",
    "window_step",
    "window_starts",
    "dense_window_starts",
    "fuse_labels",
    "coverage_mean",
]

#: Names accepted by :func:`fuse_labels`.
FUSION_MODES: tuple[str, ...] = FUSIONS




def window_step(length: int, overlap: float) -> int:
    """Distance in frames between consecutive window starts.

    Formula: ``step = max(1, round(length * (1 - overlap)))`` with Python's
    ``round`` (half to even). The ``max`` guards high overlaps on short
    windows, e.g. ``length=3, overlap=0.9`` -> ``round(0.3) = 0`` -> 1.

    Args:
        length: Window length in frames, ``>= 1``.
        overlap: Fraction of a window shared with the next one, in ``[0, 1)``.

    Returns:
        The step, an int ``>= 1``.

    Raises:
        ValueError: If ``length < 1`` or ``overlap`` is outside ``[0, 1)``
            (``overlap = 1`` would mean a step of 0, i.e. never advancing).
    """
    length = _check_int("length", length, 1)
    overlap_f = float(overlap)
    if not 0.0 <= overlap_f < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, round(length * (1.0 - overlap_f)))


def window_starts(num_frames: int, length: int, overlap: float) -> NDArray[np.int64]:
    """Start frames of all windows that lie fully inside the video.

    Starts are ``0, step, 2*step, ...`` while ``start + length <= num_frames``
    (see :func:`window_step` for ``step``). Frames after the last full window
    are not covered; use :func:`dense_window_starts` for evaluation.

    Examples: ``(100, 16, 0.5)`` -> step 8 -> ``[0, 8, ..., 80]`` (11 windows;
    88 + 16 > 100); ``(16, 16, 0.5)`` -> ``[0]``; ``(15, 16, 0.5)`` -> ``[]``.

    Args:
        num_frames: Number of frames in the video, ``>= 0``.
        length: Window length in frames, ``>= 1``.
        overlap: Overlap fraction in ``[0, 1)``.

    Returns:
        Sorted int64 array of starts; empty when ``num_frames < length``.

    Raises:
        ValueError: If ``num_frames < 0``, ``length < 1`` or ``overlap`` is
            outside ``[0, 1)``.
    """
    step = window_step(length, overlap)
    num_frames = _check_int("num_frames", num_frames, 0)
    # arange's stop is exclusive: the last admissible start is num_frames - length.
    return np.arange(0, num_frames - length + 1, step, dtype=np.int64)


def dense_window_starts(num_frames: int, length: int, overlap: float) -> NDArray[np.int64]:
    """Window starts that cover every frame of the video (for evaluation).

    Same starts as :func:`window_starts`, plus - if the last regular window
    ends before the last frame - one extra start at ``num_frames - length``,
    so the final window is aligned to the end of the video. That last window
    may overlap its predecessor more than ``overlap`` says; overlapping
    predictions are averaged by :func:`coverage_mean`.

    Edge case: when ``num_frames < length`` no window of that length fits,
    and the result is **empty** (not ``[0]``): such a video cannot be
    evaluated with this window length - the caller must pad it, use a
    shorter window, or skip it explicitly.

    Examples: ``(10, 4, 0.0)`` -> ``[0, 4, 6]``; ``(16, 16, 0.5)`` -> ``[0]``.

    Args:
        num_frames: Number of frames in the video, ``>= 0``.
        length: Window length in frames, ``>= 1``.
        overlap: Overlap fraction in ``[0, 1)``.

    Returns:
        Sorted, unique int64 array of starts; ``starts[-1] + length ==
        num_frames`` whenever the array is non-empty.

    Raises:
        ValueError: Same conditions as :func:`window_starts`.
    """
    starts = window_starts(num_frames, length, overlap)
    if starts.size and starts[-1] + length < num_frames:
        starts = np.append(starts, np.int64(num_frames - length))
    return starts


def _nan_safe_reduce(values: NDArray[np.float64], valid: NDArray[np.bool_], mode: str) -> NDArray[np.float64]:
    """Per-column reduction of ``values`` (L, D) over rows marked ``valid``.

    Columns without any valid row yield NaN. Implemented without
    ``np.nanmean`` / ``np.nanmedian`` so that all-NaN columns do not emit
    RuntimeWarnings.
    """
    num_rows, num_dims = values.shape
    out = np.full(num_dims, np.nan)
    has_any = valid.any(axis=0)
    rows = np.arange(num_rows)[:, None]
    if mode == "mean":
        count = valid.sum(axis=0)
        total = np.where(valid, values, 0.0).sum(axis=0)
        np.divide(total, count, out=out, where=has_any)
    elif mode == "median":
        for d in np.flatnonzero(has_any):  # loop over D (2 for V/A), not frames
            out[d] = np.median(values[valid[:, d], d])
    elif mode == "extremum":
        # Largest |value - 0| (0 = neutral); invalid rows get -1 so they never
        # win. argmax returns the first maximum -> ties go to the earliest.
        score = np.where(valid, np.abs(values), -1.0)
        idx = np.argmax(score, axis=0)
        out = np.where(has_any, values[idx, np.arange(num_dims)], np.nan)
    elif mode == "center":
        # Nearest valid row to L // 2; argmin returns the first minimum, so
        # of two equally near rows the earlier one is used.
        dist = np.where(valid, np.abs(rows - num_rows // 2), num_rows + 1)
        idx = np.argmin(dist, axis=0)
        out = np.where(has_any, values[idx, np.arange(num_dims)], np.nan)
    elif mode == "last":
        # Index of the last valid row = L - 1 - (first valid row of the reversed column).
        idx = num_rows - 1 - np.argmax(valid[::-1], axis=0)
        out = np.where(has_any, values[idx, np.arange(num_dims)], np.nan)
    else:  # pragma: no cover - guarded by fuse_labels
        raise AssertionError(mode)
    return out


def fuse_labels(labels: ArrayLike, mode: str = "mean") -> NDArray[np.float64]:
    """Collapse the per-frame labels of one window into a single target.

    NaN entries (unannotated frames) are ignored **per dimension**; a
    dimension whose entries are all NaN fuses to NaN. Modes, applied to each
    dimension's valid values ``v_1..v_k`` (in time order):

    * ``mean``: arithmetic mean.
    * ``extremum``: the value with the largest absolute deviation from the
      neutral point 0, sign kept (``[0.1, -0.7, 0.5] -> -0.7``); ties ->
      the earliest (``[0.5, -0.5] -> 0.5``).
    * ``median``: median (mean of the two middle values for even ``k``).
    * ``center``: the label at row ``L // 2``; if that row is NaN, the
      nearest valid row (the earlier one if two are equally near).
    * ``last``: the label of the last row; if NaN, the last valid row.

    Args:
        labels: Array of shape ``(L, D)`` with ``L >= 1``; values finite or
            NaN.
        mode: One of :data:`FUSION_MODES`.

    Returns:
        Float64 array of shape ``(D,)``.

    Raises:
        ValueError: If ``mode`` is unknown (the message lists the allowed
            names), ``labels`` is not 2-D, ``L == 0``, or a value is infinite.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; allowed: {', '.join(FUSION_MODES)}")
    values = np.asarray(labels, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"labels must have shape (L, D), got {values.shape}")
    if values.shape[0] == 0:
        raise ValueError("labels must have at least one row (L >= 1)")
    if np.any(np.isinf(values)):
        raise ValueError("labels contain infinite values")
    return _nan_safe_reduce(values, ~np.isnan(values), mode)


def coverage_mean(
    num_frames: int,
    starts: ArrayLike,
    length: int,
    window_preds: ArrayLike,
) -> NDArray[np.float64]:
    """Map window-level predictions back onto the per-frame timeline.

    Window ``w`` covers frames ``starts[w] .. starts[w] + length - 1``.
    For every frame ``f``::

        out[f] = mean of { x_w(f) : window w covers f }     (NaN if none)

    where ``x_w(f) = window_preds[w]`` for window-level predictions of shape
    ``(W, D)`` (the same value for every frame of the window), and
    ``x_w(f) = window_preds[w, f - starts[w]]`` for per-frame outputs of shape
    ``(W, length, D)``. Sums and counts are accumulated with ``np.bincount``
    (vectorised over frames; the only Python loop is over the D output
    dimensions).

    Edge cases: no windows (``W == 0``) -> all NaN; ``num_frames == 0`` ->
    shape ``(0, D)``; a NaN prediction propagates to the frames it covers.

    Args:
        num_frames: Length of the output timeline, ``>= 0``.
        starts: 1-D integer array of ``W`` window starts with
            ``0 <= start`` and ``start + length <= num_frames``.
        length: Window length, ``>= 1``.
        window_preds: Array of shape ``(W, D)`` or ``(W, length, D)``.

    Returns:
        Float64 array of shape ``(num_frames, D)``.

    Raises:
        ValueError: If ``starts`` is not a 1-D integer array, a window falls
            outside ``[0, num_frames)``, ``window_preds`` has the wrong rank,
            its first axis differs from ``len(starts)``, or (3-D case) its
            second axis differs from ``length``.
    """
    num_frames = _check_int("num_frames", num_frames, 0)
    length = _check_int("length", length, 1)
    st = np.asarray(starts)
    if st.ndim != 1:
        raise ValueError(f"starts must be 1-D, got shape {st.shape}")
    if st.size == 0:
        st = st.astype(np.int64)
    if not np.issubdtype(st.dtype, np.integer):
        raise ValueError(f"starts must be integers, got dtype {st.dtype}")
    st = st.astype(np.int64)
    preds = np.asarray(window_preds, dtype=np.float64)
    if preds.ndim == 2:
        per_frame = False
    elif preds.ndim == 3:
        per_frame = True
        if preds.shape[1] != length:
            raise ValueError(f"per-frame window_preds must have shape (W, {length}, D), got {preds.shape}")
    else:
        raise ValueError(f"window_preds must have shape (W, D) or (W, length, D), got {preds.shape}")
    if preds.shape[0] != st.shape[0]:
        raise ValueError(f"{st.shape[0]} starts but {preds.shape[0]} window predictions")
    if st.size and (st.min() < 0 or st.max() + length > num_frames):
        raise ValueError(f"windows must lie inside [0, {num_frames}); got starts in [{st.min()}, {st.max()}] with length {length}")

    num_dims = preds.shape[-1]
    # Frame index of every (window, offset) pair, flattened to W * length.
    frame_idx = (st[:, None] + np.arange(length, dtype=np.int64)[None, :]).ravel()
    if per_frame:
        flat = preds.reshape(-1, num_dims)
    else:
        # Every frame of window w receives the window-level prediction.
        flat = np.repeat(preds, length, axis=0)
    counts = np.bincount(frame_idx, minlength=num_frames).astype(np.float64)
    out = np.full((num_frames, num_dims), np.nan)
    covered = counts > 0
    for d in range(num_dims):
        sums = np.bincount(frame_idx, weights=flat[:, d], minlength=num_frames)
        out[covered, d] = sums[covered] / counts[covered]
    return out
