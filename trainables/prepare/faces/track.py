"""Following one face through a video: the main face on each frame, light smoothing of its boxes, and
``SparseFaceTrack``, which detects on reduced frames every k-th frame and carries the boxes between detections."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import cv2
import numpy as np

from trainables.prepare.faces.base import Detection

__all__ = ["KeyFrames", "SparseFaceTrack", "box_iou", "patch_similarity", "pick_main_face", "smooth_boxes"]


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


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when either is empty or not finite)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


#: Side of the gray patches ``patch_similarity`` compares.
PATCH_SIDE = 24


def _patch(frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The box's region of an RGB frame as a zero-mean, unit-norm gray PATCH_SIDE^2 vector (None: empty or flat)."""
    h, w = frame.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    region = frame[y1:y2, x1:x2]
    gray = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY) if region.ndim == 3 and region.shape[2] == 3 else region
    small = cv2.resize(np.ascontiguousarray(gray), (PATCH_SIDE, PATCH_SIDE), interpolation=cv2.INTER_AREA)
    v = small.astype(np.float64).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-6 * len(v) else None


def patch_similarity(frame_a: np.ndarray, box_a: np.ndarray, frame_b: np.ndarray, box_b: np.ndarray) -> float:
    """Normalised cross-correlation in [-1, 1] of two boxes' regions (gray, resized to 24x24); 0 when either region is
    empty or flat (a blank frame)."""
    pa, pb = _patch(frame_a, box_a), _patch(frame_b, box_b)
    return float(pa @ pb) if pa is not None and pb is not None else 0.0


class KeyFrames(NamedTuple):
    """What ``SparseFaceTrack.detect_keys`` hands to ``resolve`` for one chunk: its key frame positions, and the last
    box found on a key frame before them (ties between a span's detections fall back on it)."""

    keys: list[int]
    previous: np.ndarray | None


class SparseFaceTrack:
    """The main face of each frame of a video fed in order, chunk by chunk, with few detector calls.

    The detector runs on frames reduced to ``detect_width`` (boxes and landmarks are mapped back to the frame; a
    detector with a ``detect_max_side`` attribute, face_alignment, reduces by itself and keeps its landmarks on the
    full frame) and only on key frames: every ``STEADY * detect_every``-th frame and the last (every frame when
    ``detect_every`` is 1). Between two consecutive key frames the boxes (scores: the lower of the two; landmarks) are
    interpolated linearly when

    * both key frames have a face scoring at least ``min_score``,
    * their boxes agree (IoU >= ``agree_iou``; for a span longer than ``detect_every`` frames, IoU >= ``STEADY_IOU``:
      only a steady face is carried that far), and
    * every frame between still shows the face: the gray patch under its interpolated box correlates with the patch
      on one of the two key frames (normalised cross-correlation >= ``min_similarity``; a blank or cut frame does not).

    Otherwise the span is split: its middle frame is detected and each half is carried or split again, until every
    frame between is either carried or detected; a span whose key frames disagree only briefly (a quick turn, a
    cut-away of one frame) costs one or two detections instead of all of them. A span of ``STEADY * detect_every``
    frames that is not carried is split at its middle, a frame of the ``detect_every`` grid, so a moving face is
    detected on every ``detect_every``-th frame as before and a steady one on every ``STEADY * detect_every``-th only.
    A frame is only ever marked as a face when the detector found one on it or on both sides of it (within
    ``detect_every`` frames, or ``STEADY * detect_every`` frames for a steady face) with the face visibly there.
    ``detect_every=1`` and ``detect_width=0`` detect every frame at full resolution.

    Judgment call on steady spans: interpolating over 8 frames instead of 4 could follow a face less closely; the
    stricter agreement keeps it to faces that barely moved. On the Megamind clips (bench_prepare.py --videos) it
    saves 18% of the detector calls with the same face share as before (95.7% against 94.6% for full detection) and
    the same agreement with full detection (box IoU mean 0.860 against 0.862 before, both with gray-first reduction
    below); ``STEADY_IOU`` 0.75 saved 12% (IoU 0.868), ``STEADY`` 3 added 2.8 points of face share (too many frames
    carried).

    Narrowing by size: a detector with ``accepts_min_size`` (the Haar cascade, whose cost is mostly its smallest
    scales) is told, while a face is followed (found on a key frame at most two key intervals back, or on either end of
    a span), to skip faces smaller than ``NARROW`` times the followed face's side; a frame where that finds no face
    scoring ``min_score`` is searched again at the sizes it skipped (up to ``FALLBACK_OVERLAP`` times its smallest,
    so a face at the boundary keeps its hits in one group), so no face that full detection would find is lost for
    want of looking. Judgment call: the main face does not shrink by a third between two key frames, and a
    much smaller second face is left out only while the followed one is found, where ``pick_main_face`` keeps the
    followed face anyway unless the small one scores clearly higher. Boxes of the followed face are unchanged: OpenCV
    groups hits of similar size only (within 20%), so dropping scales far below it does not move its group. On the
    Megamind clips this cuts the detector's CPU time by 45% (region-of-interest searches were tried too: cutting the
    frame changes the cascade's sampling grid, and with it scores and boxes, far more than the 2-point budget).
    ``detect_width=0, detect_every=1`` stays the exhaustive reference: it never narrows.

    Args:
        detector: a ``FaceDetector``.
        num_frames: frames the video will be fed.
        detect_width, detect_every, min_score: as in ``Registration``.
        pick: chooses the face to follow from one frame's detections and the previous box (``pick_main_face``).
    Attributes:
        boxes: (T, 4) float32, NaN where no face; scores: (T,) float32 (0 where no face); landmarks: (T, 5, 2) float32
            (NaN where none). Rows up to the value ``feed`` returned are final.
        detected: (T,) bool, frames the detector ran on (for statistics and tests).
    """

    #: While following a face, faces smaller than this share of its side are not looked for (see the class doc).
    NARROW = 0.65
    #: A narrowed search that finds no face is followed by one up to this many times its smallest size.
    FALLBACK_OVERLAP = 1.3
    #: Key frames lie this many ``detect_every`` intervals apart; spans that long are carried only when their key
    #: frames' boxes agree with IoU >= STEADY_IOU, else they are split at the ``detect_every`` grid (see the class doc).
    STEADY = 2
    STEADY_IOU = 0.7

    def __init__(self, detector: Any, num_frames: int, *, detect_width: int = 480, detect_every: int = 4,
                 min_score: float = 0.8, agree_iou: float = 0.5, min_similarity: float = 0.5,
                 pick: Callable[..., Detection | None] | None = None) -> None:
        self.detector = detector
        self.t_out = int(num_frames)
        self.detect_width = int(detect_width)
        self.detect_every = max(1, int(detect_every))
        self.key_every = self.detect_every * (self.STEADY if self.detect_every > 1 else 1)
        self.min_score, self.agree_iou, self.min_similarity = float(min_score), float(agree_iou), float(min_similarity)
        self.pick = pick or pick_main_face
        self.narrow = bool(getattr(detector, "accepts_min_size", False)) and not (self.detect_width == 0
                                                                                   and self.detect_every == 1)
        self.boxes = np.full((self.t_out, 4), np.nan, dtype=np.float32)
        self.scores = np.zeros(self.t_out, dtype=np.float32)
        self.landmarks = np.full((self.t_out, 5, 2), np.nan, dtype=np.float32)
        self.detected = np.zeros(self.t_out, dtype=bool)
        # resolve's state: the last key frame whose spans are done
        self._last_key: int | None = None
        self._last_key_frame: np.ndarray | None = None  # kept: the caller may have let go of it (its box is final)
        # detect_keys' state (it may run ahead on another thread): the last key frame box, the last key frame with a
        # face (narrowed detection follows it)
        self._previous_box: np.ndarray | None = None
        self._face_key: int | None = None

    def is_key(self, t: int) -> bool:
        return t % self.key_every == 0 or t == self.t_out - 1

    def _detect_following(self, frames: list[np.ndarray], followed: list[np.ndarray | None]) -> list[list[Detection]]:
        """``_detect``, narrowed by size around the face followed on each frame (``followed[i]``: a full-frame box, or
        None to look at every size): faces smaller than ``NARROW`` times its side are not looked for; frames where that
        finds no face scoring ``min_score`` are detected again at every size."""
        if not frames:
            return []
        if not self.narrow:
            return self._detect(frames)
        h, w = frames[0].shape[:2]
        k = self.detect_width / w if self.detect_width and w > self.detect_width else 1.0  # frame -> detection scale
        out: list[list[Detection]] = []
        for frame, box in zip(frames, followed):
            side = None
            if box is not None and np.isfinite(box).all():
                side = int(self.NARROW * k * min(box[2] - box[0], box[3] - box[1]))
            narrowed = side is not None and side > getattr(self.detector, "min_size", 0)
            small, scale = self._reduce([frame])  # once, for the narrowed search and the full one
            dets = self._detect_reduced(small, scale, min_size=side)[0] if narrowed else None
            if dets is None:
                dets = self._detect_reduced(small, scale)[0]
            elif not any(d.score >= self.min_score for d in dets):
                # The sizes the narrowed search skipped, overlapping it by FALLBACK_OVERLAP so that a face near the
                # boundary keeps all its hits in one group; its large sizes, the cheap ones, were searched already.
                dets = sorted(dets + self._detect_reduced(small, scale, max_size=int(self.FALLBACK_OVERLAP * side))[0],
                              key=lambda d: -d.score)
            out.append(dets)
        return out

    def _detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """Detections on full frames, in full-frame coordinates, detecting at ``detect_width``."""
        if not frames:
            return []
        if hasattr(self.detector, "detect_max_side"):
            # face_alignment reduces by itself and takes its landmarks from the full frame: give it the same scale.
            h, w = frames[0].shape[:2]
            self.detector.detect_max_side = (round(max(h, w) * self.detect_width / w)
                                             if self.detect_width and w > self.detect_width else None)
            return self.detector.detect(np.stack(frames))
        return self._detect_reduced(*self._reduce(frames))

    def _reduce(self, frames: list[np.ndarray]) -> tuple[np.ndarray, tuple[float, float]]:
        """The frames as the detector takes them: gray when the detector accepts gray (so a narrowed search and the
        full one after it share one conversion), then reduced to ``detect_width`` (INTER_AREA); with the x, y factors
        mapping them back to the frame.

        Gray first, as full detection does (it converts the full frame, and the cascade reduces the gray image): the
        reduction then works on one channel instead of three (0.75 ms instead of 1.7 ms a 720x528 frame), and the
        boxes come closer to full detection's (IoU mean 0.872 against 0.862 when reduced in colour, Megamind clips);
        the cascade's boxes move with the last grey level, so the two orders do not give identical boxes."""
        h, w = frames[0].shape[:2]
        if getattr(self.detector, "accepts_gray", False):
            frames = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        scale = (1.0, 1.0)
        if self.detect_width and w > self.detect_width:
            sw, sh = self.detect_width, max(1, round(h * self.detect_width / w))
            frames = [cv2.resize(f, (sw, sh), interpolation=cv2.INTER_AREA) for f in frames]
            scale = (w / sw, h / sh)
        return np.stack(frames), scale

    def _detect_reduced(self, small: np.ndarray, scale: tuple[float, float], min_size: int | None = None,
                        max_size: int | None = None) -> list[list[Detection]]:
        """Detections on frames from ``_reduce``, mapped back to full-frame coordinates."""
        kwargs = {}
        if min_size is not None and min_size > getattr(self.detector, "min_size", 0):
            kwargs["min_size"] = int(min_size)
        if max_size is not None:
            kwargs["max_size"] = int(max_size)
        if getattr(self.detector, "accepts_gray", False):
            kwargs["gray"] = True
        found = self.detector.detect(small, **kwargs)
        if scale == (1.0, 1.0):
            return found
        kx, ky = scale
        out = []
        for dets in found:
            mapped = []
            for d in dets:
                box = (np.asarray(d.box, dtype=np.float32) * np.array([kx, ky, kx, ky], dtype=np.float32))
                lm = None if d.landmarks5 is None else (np.asarray(d.landmarks5, dtype=np.float32)
                                                        * np.array([kx, ky], dtype=np.float32))
                mapped.append(Detection(box, d.score, lm))
            out.append(mapped)
        return out

    def _assign(self, t: int, dets: list[Detection], previous: np.ndarray | None) -> None:
        self.detected[t] = True
        face = self.pick(dets, previous)
        if face is not None:
            self.boxes[t], self.scores[t] = face.box, face.score
            if face.landmarks5 is not None:
                self.landmarks[t] = face.landmarks5

    def _has_face(self, t: int) -> bool:
        return bool(self.scores[t] >= self.min_score and np.isfinite(self.boxes[t]).all())

    def _carry(self, a: int, b: int, frame_at: Callable[[int], np.ndarray]) -> bool:
        """Interpolate frames a+1 .. b-1 from key frames a and b when the face is followed; False when they must be
        detected."""
        agree = self.STEADY_IOU if b - a > self.detect_every else self.agree_iou
        if not (self._has_face(a) and self._has_face(b)) or box_iou(self.boxes[a], self.boxes[b]) < agree:
            return False
        ts = np.arange(a + 1, b)
        f = ((ts - a) / (b - a)).astype(np.float32)
        boxes = self.boxes[a] + f[:, None] * (self.boxes[b] - self.boxes[a])
        fa, fb = frame_at(a), frame_at(b)
        pa, pb = _patch(fa, self.boxes[a]), _patch(fb, self.boxes[b])
        for t, box in zip(ts, boxes):
            p = _patch(frame_at(int(t)), box)
            sims = [float(p @ q) for q in (pa, pb) if p is not None and q is not None]
            if not sims or max(sims) < self.min_similarity:
                return False
        self.boxes[a + 1:b] = boxes
        self.scores[a + 1:b] = min(self.scores[a], self.scores[b])
        lms_a, lms_b = self.landmarks[a], self.landmarks[b]
        if np.isfinite(lms_a).all() and np.isfinite(lms_b).all():
            self.landmarks[a + 1:b] = lms_a + f[:, None, None] * (lms_b - lms_a)
        return True

    def feed(self, start: int, chunk: np.ndarray, frame_at: Callable[[int], np.ndarray]) -> int:
        """Take the frames ``start .. start + len(chunk) - 1`` (uint8 RGB) and detect what can be decided:
        ``detect_keys`` then ``resolve``.

        Args:
            frame_at: returns the frame at an earlier position that is not final yet (after the last position this
                method returned); such frames are needed again when the span before a key frame is detected.
        Returns:
            The last position whose box, score and landmarks are final (-1 when none is yet).
        """
        return self.resolve(start, chunk, self.detect_keys(start, chunk), frame_at)

    def detect_keys(self, start: int, chunk: np.ndarray) -> KeyFrames:
        """The first half of ``feed``: detect the chunk's key frames.

        A key frame depends on earlier key frames only (the face it is narrowed around, the box that breaks ties), so
        the key frames of later chunks may be detected, in order, on another thread while ``resolve`` works on earlier
        ones; the two touch different frames' rows. Returns what ``resolve`` needs for this chunk."""
        keys = [start + k for k in range(len(chunk)) if self.is_key(start + k)]
        before = previous = self._previous_box
        if not keys:
            return KeyFrames(keys, before)
        if self.narrow:
            # One key frame at a time, each narrowed around the face of the last key frame that had one.
            for t in keys:
                recent = self._face_key is not None and t - self._face_key <= 2 * self.key_every
                follow = self.boxes[self._face_key].copy() if recent else None
                self._assign(t, self._detect_following([chunk[t - start]], [follow])[0], previous)
                if self._has_face(t):
                    self._face_key = t
                if np.isfinite(self.boxes[t]).all():
                    previous = self.boxes[t].copy()
        else:
            for t, dets in zip(keys, self._detect([chunk[t - start] for t in keys])):
                self._assign(t, dets, previous)
                if np.isfinite(self.boxes[t]).all():
                    previous = self.boxes[t].copy()
        self._previous_box = previous
        return KeyFrames(keys, before)

    def resolve(self, start: int, chunk: np.ndarray, keyed: KeyFrames, frame_at: Callable[[int], np.ndarray]) -> int:
        """The second half of ``feed``, once ``detect_keys`` has detected the chunk's key frames: carry or split the
        spans that end at them. Chunks must come in order; arguments and result as in ``feed``."""
        keys = keyed.keys
        if not keys:
            return -1 if self._last_key is None else self._last_key

        def get(t: int) -> np.ndarray:
            if t >= start:
                return chunk[t - start]
            return self._last_key_frame if t == self._last_key else frame_at(t)

        # Spans between key frames that cannot be carried are split at their middle frame, which is detected (the
        # middles of all such spans in one batch), and each half is carried or split again.
        spans: list[tuple[int, int]] = []
        a = self._last_key
        for b in keys:
            if a is not None and b - a > 1 and not self._carry(a, b, get):
                spans.append((a, b))
            a = b
        while spans:
            mids = [(a + b) // 2 for a, b in spans]
            near = [self.boxes[a] if self._has_face(a) else self.boxes[b] if self._has_face(b) else None
                    for a, b in spans]
            found = self._detect_following([get(m) for m in mids], near)
            for (a, b), m, dets in zip(spans, mids, found):
                self._assign(m, dets, self.boxes[a] if np.isfinite(self.boxes[a]).all() else
                             self.boxes[b] if np.isfinite(self.boxes[b]).all() else keyed.previous)
            spans = [(x, y) for a, b in spans for x, y in ((a, (a + b) // 2), ((a + b) // 2, b))
                     if y - x > 1 and not self._carry(x, y, get)]
        self._last_key = keys[-1]
        self._last_key_frame = chunk[keys[-1] - start]
        return self._last_key
