"""Face registration: the settings (``Registration``, part of every cache entry's address) and the two ways of turning
a frame into a face crop, coarse (crop around a detected box) and fine (similarity alignment of 5 landmarks onto a
template).

Coordinates: x to the right, y down, in pixels, with integer values at pixel centres (OpenCV's convention for
``warpAffine``). Landmarks are ordered left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner
("left" = smaller x in the image). Outputs are uint8, (H, W, 3) RGB or (H, W, 1) gray, so crops of a video stack into
the (T, H, W, C) arrays of the clip cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from trainables.errors import UserError

ALIGNMENTS = ("coarse", "fine")
DETECTORS = ("precomputed", "opencv", "face_alignment")
#: Settings of how faces are detected (not of the crops); they do nothing with ``precomputed`` faces.
DETECTION_SETTINGS = ("detect_width", "detect_every")
#: Bounds of ``detect_width`` (other than 0 = full resolution) and ``detect_every``.
MIN_DETECT_WIDTH = 64
MAX_DETECT_EVERY = 25


@dataclass(frozen=True)
class Registration:
    """Face registration settings (SPEC 000).

    Attributes:
        size: crop side in pixels (96, 112, 160, 224, 384 ...) or (height, width) such as (100, 80).
        margin: the detected box is enlarged by this fraction of its longer side on every side (coarse crops).
        min_score: frames whose detection score is below it are invalid (no face), 0.8 by default as in paper 000.
        grayscale: store one channel (paper 001 uses grayscale 96x96 crops).
        detector: ``precomputed`` (the manifest's face sidecar, or a folder of cropped-aligned frames), ``opencv``
            (Haar cascade, needs no download) or ``face_alignment`` (S3FD/BlazeFace + FAN landmarks; local weights).
        align: ``coarse`` (crop and resize) or ``fine`` (5 landmarks -> similarity transform onto a template with
            the eyes horizontal); fine needs landmarks (a sidecar with them, or the face_alignment detector).
        fps: keep frames at this rate (10, 25, 30, 50 ...); None keeps the video's own rate.
        smooth: radius in frames of the moving average applied to detected boxes against jitter (0 = off); boxes
            from a precomputed sidecar are used as given.
        face_detector: the face_alignment package's detector (``sfd``, ``blazeface`` ...).
        detect_width: frames wider than this are reduced to this width for face detection only (boxes are mapped
            back; crops and face_alignment's landmarks use the full frame); 0 detects at full resolution. The default
            480 detects 720p at 480x270 (a 1080p frame at 480x270 too) and costs about a quarter of the time of full
            720p; against full-resolution boxes on a 720p clip (bench_prepare.py) the worst frame's IoU was 0.88 at
            480 px, 0.81 at 400 and 0.75 at 320. OpenCV's Haar detector finds faces of at least 30 px at detection
            scale, so the smallest face found is 30 * width / 480 px: 80 px on 720p, 120 px on 1080p (6.25% of the
            frame width); face videos for emotion recognition (interviews, Aff-Wild2, AFEW-VA, SEWA, RECOLA) have
            larger faces. Use a wider setting (or 0) for small faces.
        detect_every: run the detector on every k-th kept frame (and the last) only; boxes between two detections are
            interpolated when both found a face, the two boxes agree (IoU >= 0.5) and every frame between still shows
            the face (normalised cross-correlation of the face patch >= 0.5); otherwise the span's middle frame is
            detected and each half is tried again (``faces.SparseFaceTrack``). Where the face is steady, key frames
            lie 2k apart: such a span is carried when its two boxes agree with IoU >= 0.7, else it is split at the k
            grid. While a face is followed, the detector first looks only for faces of at least 0.65 of its size,
            then, if none, for the sizes it skipped. Frames without a detected face stay invalid. 1 detects every
            frame. ``detect_every=1, detect_width=0`` is the full-resolution, every-frame detection of earlier
            versions. The default 4: on OpenCV's 720x528 Megamind clips (bench_prepare.py --videos) the Haar detector
            at 480 px then runs on about 31% of frames (39% before steady spans; spans that do not carry are split)
            and its calls are about 70% of the CPU time; a larger k lost box agreement there (a fast face's boxes
            stop agreeing, and the span is detected anyway), and steady spans of 3k added 3.5 points of face share
            over full detection (frames without a face carried over).
    """

    size: int | tuple[int, int] = 64
    margin: float = 0.15
    min_score: float = 0.8
    grayscale: bool = False
    detector: str = "precomputed"
    align: str = "coarse"
    fps: float | None = None
    smooth: int = 2
    face_detector: str = "sfd"
    detect_width: int = 480
    detect_every: int = 4

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise UserError(f"detector {self.detector!r} is unknown; allowed: {', '.join(DETECTORS)}")
        if self.align not in ALIGNMENTS:
            raise UserError(f"align {self.align!r} is unknown; allowed: {', '.join(ALIGNMENTS)}")
        if self.fps is not None and not self.fps > 0:
            raise UserError(f"fps must be positive or None (the video's own rate), got {self.fps}")
        if not 0.0 <= self.min_score <= 1.0:
            raise UserError(f"min_score must lie in [0, 1], got {self.min_score}")
        for name, value in (("detect_width", self.detect_width), ("detect_every", self.detect_every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise UserError(f"{name} must be a whole number, got {value!r}")
        if self.detect_width != 0 and self.detect_width < MIN_DETECT_WIDTH:
            raise UserError(f"detect_width must be 0 (full resolution) or at least {MIN_DETECT_WIDTH} px, got "
                            f"{self.detect_width}")
        if not 1 <= self.detect_every <= MAX_DETECT_EVERY:
            raise UserError(f"detect_every must lie in [1, {MAX_DETECT_EVERY}] (1 = detect on every frame), got "
                            f"{self.detect_every}")
        if self.align == "fine" and self.detector == "opencv":
            raise UserError("align 'fine' needs landmarks; the opencv detector gives none (use face_alignment, or a "
                            "sidecar with landmarks)")

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def digest(self) -> str:
        """Short hash of the settings, part of every cache entry's address. Detection settings are left out for
        ``precomputed`` faces (nothing is detected), so those entries keep the address they had before the settings
        existed."""
        settings = asdict(self)
        if self.fps is not None:
            # Resampled entries chose their frames by round-half-to-even before the one time -> frame rule
            # (half up) applied here too: such entries get a new address rather than being served stale.
            settings["frame_rule"] = "half_up"
        if self.detector == "precomputed":
            for name in DETECTION_SETTINGS:
                settings.pop(name)
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


#: The canonical 5-point template in a 112 x 112 crop (x, y; pixel centres at integers, so the crop's centre column is
#: x = 55.5). It is the usual face-recognition layout made exactly left/right symmetric about that column, so the eyes
#: (and mouth corners) are horizontal: eyes at y 51.5, 35 px apart; nose tip at (55.5, 71.5); mouth corners at y 92,
#: 29 px apart. Eyes sit at 46% of the height, the mouth at 82%.
CANONICAL_TEMPLATE_112 = np.array([
    [38.0, 51.5],   # left eye centre
    [73.0, 51.5],   # right eye centre
    [55.5, 71.5],   # nose tip
    [41.0, 92.0],   # left mouth corner
    [70.0, 92.0],   # right mouth corner
], dtype=np.float64)
CANONICAL_SIZE = 112


def _hw(size: int | tuple[int, int], who: str) -> tuple[int, int]:
    """Output (height, width) from an int (square) or an (H, W) pair."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"{who}: size must be an int or an (height, width) pair, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{who}: size must be positive, got {size!r}")
    return h, w


def TEMPLATE_5PTS(size: int | tuple[int, int]) -> np.ndarray:  # noqa: N802 - the name the spec uses
    """The 5-point template for an output crop of ``size``.

    ``CANONICAL_TEMPLATE_112`` scaled uniformly from 112 x 112 to ``size`` (pixel centres map as (p + 0.5) * k - 0.5,
    the same mapping as resizing the 112 crop). For a non-square (H, W) crop the template is scaled to fit the shorter
    side and centred along the longer one, so faces keep their proportions.

    Args:
        size: output side, or (height, width).
    Returns:
        (5, 2) float64 x, y.
    Raises:
        ValueError: size not positive.
    """
    h, w = _hw(size, "TEMPLATE_5PTS")
    k = min(h, w) / CANONICAL_SIZE
    pts = (CANONICAL_TEMPLATE_112 + 0.5) * k - 0.5
    pts[:, 0] += (w - min(h, w)) / 2.0
    pts[:, 1] += (h - min(h, w)) / 2.0
    return pts


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity transform (rotation, uniform scale, translation; no reflection) mapping src onto dst.

    Written with complex numbers, the model is w = a z + b with a = s e^{i theta}; the least-squares solution is
    a = sum(conj(z_c) w_c) / sum(|z_c|^2) over the centred points and b = mean(w) - a mean(z).

    Args:
        src: (N, 2) points, N >= 2.
        dst: (N, 2) target points.
    Returns:
        (2, 3) float64 matrix M with dst ~= M @ [x, y, 1].
    Raises:
        ValueError: shapes differ or N < 2, non-finite values, or all src points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_from_points: src and dst must both be (N, 2) with N >= 2, got {src.shape} and "
                         f"{dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("similarity_from_points: points must be finite (no NaN: a frame without landmarks cannot be "
                         "aligned)")
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    denom = float(np.sum(np.abs(zc) ** 2))
    if denom < 1e-12:
        raise ValueError("similarity_from_points: the source points all coincide; no transform is defined")
    a = np.sum(np.conj(zc) * wc) / denom
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points; returns (N, 2) float64."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]


def _finish(img: np.ndarray, grayscale: bool) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if grayscale and img.shape[-1] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    return img


def _check_frame(frame: np.ndarray, who: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or not (frame.ndim == 3 and frame.shape[-1] in (1, 3)):
        raise ValueError(f"{who}: frame must be uint8 (H, W, 3) RGB or (H, W, 1) gray, got {frame.dtype} {frame.shape}")
    return frame


def crop_region(box: np.ndarray, size: int | tuple[int, int], margin: float = 0.15) -> tuple[int, int, int, int]:
    """The integer region ``coarse_crop`` cuts for ``box``.

    The box is enlarged by ``margin`` of its width / height on each side, then widened or heightened (centred) to the
    output's aspect H:W so the whole enlarged box fits; for a square output that is a square of side
    ``max(w, h) * (1 + 2 margin)``.

    Returns:
        (x1, y1, x2, y2) integers, x2/y2 exclusive; may extend beyond the frame.
    Raises:
        ValueError: box not 4 finite numbers with x2 > x1, y2 > y1; negative margin.
    """
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"coarse_crop: box must be finite x1, y1, x2, y2 with x2 > x1 and y2 > y1, got {box.tolist()}")
    if margin < 0:
        raise ValueError(f"coarse_crop: margin must be >= 0, got {margin}")
    h, w = _hw(size, "coarse_crop")
    bw, bh = (box[2] - box[0]) * (1 + 2 * margin), (box[3] - box[1]) * (1 + 2 * margin)
    region_h = max(bh, bw * h / w)
    region_w = region_h * w / h
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    x1, y1 = int(round(cx - region_w / 2)), int(round(cy - region_h / 2))
    x2, y2 = int(round(cx + region_w / 2)), int(round(cy + region_h / 2))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def coarse_crop(frame: np.ndarray, box: np.ndarray, size: int | tuple[int, int], margin: float = 0.15,
                grayscale: bool = False) -> np.ndarray:
    """Coarse registration: cut the region around a face box (see ``crop_region``) and resize it.

    Parts of the region outside the frame are black, so a face at the border keeps its scale and position in the
    crop. Resizing uses ``cv2.INTER_AREA`` (no aliasing when shrinking).

    Args:
        frame: (H, W, 3) uint8 RGB (or (H, W, 1) gray).
        box: (4,) x1, y1, x2, y2.
        size: output side (96, 112, 160, 224, 384, ...) or (height, width), e.g. (100, 80).
        margin: enlargement of the box on each side, as a fraction of its width / height.
        grayscale: return one gray channel.
    Returns:
        (H, W, 3) uint8 RGB, or (H, W, 1) when ``grayscale`` (or the frame is gray).
    Raises:
        ValueError: bad frame, box, size or margin.
    """
    frame = _check_frame(frame, "coarse_crop")
    h, w = _hw(size, "coarse_crop")
    x1, y1, x2, y2 = crop_region(box, (h, w), margin)
    fh, fw = frame.shape[:2]
    if x1 >= 0 and y1 >= 0 and x2 <= fw and y2 <= fh:
        region = frame[y1:y2, x1:x2]  # inside the frame: resized in place, no padded copy
    else:
        region = np.zeros((y2 - y1, x2 - x1, frame.shape[2]), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, fw), min(y2, fh)
        if sx2 > sx1 and sy2 > sy1:
            region[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    out = cv2.resize(region, (w, h), interpolation=cv2.INTER_AREA)
    return _finish(out, grayscale)


def fine_align(frame: np.ndarray, landmarks5: np.ndarray, size: int | tuple[int, int],
               grayscale: bool = False) -> np.ndarray:
    """Fine registration: warp the frame so its 5 landmarks land on ``TEMPLATE_5PTS(size)`` (eyes horizontal).

    The similarity transform is the least-squares fit of ``similarity_from_points``. When it shrinks the face by more
    than 2x, the frame is first reduced with ``cv2.INTER_AREA`` (and the transform adjusted), because ``warpAffine``'s
    bilinear sampling would alias; the remaining warp is bilinear with a black border.

    Args:
        frame: (H, W, 3) uint8 RGB (or (H, W, 1) gray).
        landmarks5: (5, 2) x, y in frame pixels, in the order of ``CANONICAL_TEMPLATE_112``.
        size: output side or (height, width).
        grayscale: return one gray channel.
    Returns:
        (H, W, 3) uint8 RGB, or (H, W, 1) gray.
    Raises:
        ValueError: bad frame or size; landmarks not (5, 2), not finite, or all equal.
    """
    frame = _check_frame(frame, "fine_align")
    h, w = _hw(size, "fine_align")
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"fine_align: landmarks5 must be (5, 2), got {lm.shape}")
    m = similarity_from_points(lm, TEMPLATE_5PTS((h, w)))
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    src = frame
    if scale < 0.5:
        fh, fw = frame.shape[:2]
        # Reduce to about twice the final resolution; the warp then shrinks by ~0.5..1, where bilinear is fine.
        f = min(1.0, 2.0 * scale)
        nw, nh = max(1, round(fw * f)), max(1, round(fh * f))
        src = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
        if src.ndim == 2:
            src = src[..., None]
        kx, ky = nw / fw, nh / fh
        # Resize maps frame pixel p to (p + 0.5) * k - 0.5; compose its inverse with m.
        inv = np.array([[1 / kx, 0, 0.5 / kx - 0.5], [0, 1 / ky, 0.5 / ky - 0.5], [0, 0, 1]])
        m = m @ inv
    out = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _finish(out, grayscale)


__all__ = ["DETECTION_SETTINGS", "CANONICAL_TEMPLATE_112", "TEMPLATE_5PTS", "similarity_from_points", "apply_transform",
           "crop_region", "coarse_crop", "fine_align"]
