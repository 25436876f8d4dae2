"""Following one face through a video: the main face on each frame, and light smoothing of its boxes."""
from __future__ import annotations

import numpy as np

from trainables.prepare.faces.base import Detection

__all__ = ["pick_main_face", "smooth_boxes"]


def _centre(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def pick_main_face(dets: list[Detection], previous_box: np.ndarray | None = None,
                   tie_tolerance: float = 0.05) -> Detection | None:
    """Choose the face to follow on one frame.

    The highest score wins. Detections whose score is within ``tie_tolerance`` of the best are near-ties: among them the
    one whose box centre is closest to ``previous_box``'s centre wins, so the track does not jump between two people
    with similar scores. Without a usable previous box, the best score wins (the first one on exact ties).

    Args:
        dets: detections on the frame (any order).
        previous_box: (4,) box chosen on the previous frame, or None (first frame, or after frames without a face; a
            box with NaN counts as None).
        tie_tolerance: score difference below which two detections count as tied.
    Returns:
        The chosen detection, or None when ``dets`` is empty.
    """
    if not dets:
        return None
    best = max(d.score for d in dets)
    tied = [d for d in dets if d.score >= best - tie_tolerance]
    if previous_box is None or len(tied) == 1 or not np.isfinite(np.asarray(previous_box, float)).all():
        return max(dets, key=lambda d: d.score)
    ref = _centre(previous_box)
    return min(tied, key=lambda d: (float(np.linalg.norm(_centre(d.box) - ref)), -d.score))


def smooth_boxes(boxes: np.ndarray, radius: int = 2) -> np.ndarray:
    """Light temporal smoothing of a face track against detector jitter.

    Each valid row becomes the mean of the valid rows within ``radius`` frames on either side (itself included); rows
    with NaN (no face) are neither used nor changed, so near a gap or the ends of the video the mean simply uses the
    neighbours that exist.

    Args:
        boxes: (T, 4) float, NaN rows = no face on that frame.
        radius: half-width of the window in frames; 0 returns a copy.
    Returns:
        (T, 4) float64 smoothed boxes, NaN exactly where the input row had a NaN.
    Raises:
        ValueError: wrong shape or negative radius.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"smooth_boxes: boxes must have shape (T, 4), got {boxes.shape}")
    if radius < 0:
        raise ValueError(f"smooth_boxes: radius must be >= 0, got {radius}")
    valid = np.isfinite(boxes).all(axis=1)
    out = np.full_like(boxes, np.nan)
    if radius == 0 or not valid.any():
        out[valid] = boxes[valid]
        return out
    t = len(boxes)
    # Windowed sums through cumulative sums: O(T) whatever the radius.
    vals = np.where(valid[:, None], boxes, 0.0)
    csum = np.vstack([np.zeros((1, 4)), np.cumsum(vals, axis=0)])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    lo = np.clip(np.arange(t) - radius, 0, t)
    hi = np.clip(np.arange(t) + radius + 1, 0, t)
    sums = csum[hi] - csum[lo]
    counts = (ccount[hi] - ccount[lo]).astype(np.float64)
    out[valid] = sums[valid] / counts[valid, None]
    return out
