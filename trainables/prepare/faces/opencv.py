"""The ``opencv`` face detector: OpenCV's Haar cascade ``haarcascade_frontalface_default.xml``.

Needs nothing downloaded (the cascade ships with ``opencv-python<5``), gives boxes and a calibrated score (see
``haar_score``), no landmarks; offline, CPU.
"""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from trainables.prepare.faces.base import Detection, DetectorUnavailableError, _check_frames, register_detector

__all__ = ["HAAR_CASCADE", "OpenCVHaarDetector", "haar_cascade_path", "haar_score"]

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
#: Level weight at which ``haar_score`` is 0.5, and its temperature (see ``haar_score``).
HAAR_WEIGHT_MID = 1.0
HAAR_WEIGHT_SCALE = 1.0


def haar_score(level_weight: float | np.ndarray) -> float | np.ndarray:
    """Map a Haar cascade level weight to a confidence in [0, 1].

    OpenCV's ``detectMultiScale3(..., outputRejectLevels=True)`` reports for each (grouped) detection the raw sum of the
    cascade's last stage, unbounded and without a probabilistic meaning. It is mapped with the increasing logistic
    ``1 / (1 + exp(-(w - HAAR_WEIGHT_MID) / HAAR_WEIGHT_SCALE))`` with mid 1.0 and scale 1.0, so that the score is 0.5 at
    w = 1.0, 0.8 at w = 2.39 and 0.95 at w = 3.94.

    Calibration (``haarcascade_frontalface_default.xml``, scale factor 1.1, 5 neighbours), measured on 150 random
    similarity warps of ``skimage.data.astronaut()`` (face 30-115 px, rotation +-12 degrees, JPEG quality 20-95): the
    face's weight had median 5.8 (score 0.99), 5th percentile 3.6 (0.93), 1st percentile 2.7 (0.85); so a clear frontal
    face passes the default 0.8 threshold. False positives on 18 face-free scikit-image pictures mostly weighed below
    2.3 (score < 0.79); face-like textures (a tray of coins) reach 3-4 and pass, which no weight threshold can avoid.
    The constants hold for this cascade only.
    """
    z = (np.asarray(level_weight, dtype=np.float64) - HAAR_WEIGHT_MID) / HAAR_WEIGHT_SCALE
    out = 1.0 / (1.0 + np.exp(-z))
    return float(out) if np.ndim(out) == 0 else out


def haar_cascade_path() -> Path:
    """Path of OpenCV's frontal face cascade.

    Raises:
        DetectorUnavailableError: this OpenCV ships no Haar cascades (OpenCV 5 dropped them).
    """
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder) / HAAR_CASCADE if folder else None
    if path is None or not path.is_file():
        where = f" in {folder}" if folder else " (cv2.data.haarcascades does not exist)"
        raise DetectorUnavailableError(
            f"face detector 'opencv' needs the Haar cascade {HAAR_CASCADE}, which OpenCV {cv2.__version__} does not ship"
            f"{where}; OpenCV 5 dropped the Haar cascades: install opencv-python<5 (pip install 'opencv-python>=4.10,<5'),"
            f" or use the detector 'face_alignment'")
    return path


@register_detector("opencv")
class OpenCVHaarDetector:
    """Haar cascade face detector (offline, CPU, no landmarks).

    Args:
        scale_factor: image pyramid step of ``detectMultiScale``.
        min_neighbors: raw hits a face needs to be kept (higher = fewer false positives).
        min_size: smallest face side in pixels.
        min_score: detections scoring below are dropped (0 keeps all; thresholding usually happens later).
    Raises:
        DetectorUnavailableError: the cascade file is missing or unreadable.
    """

    name = "opencv"
    gives_landmarks = False
    #: ``detect`` takes a per-call ``min_size`` (``SparseFaceTrack`` narrows the search around a followed face).
    accepts_min_size = True
    #: ``detect(..., gray=True)`` takes gray frames (B, H, W), which the cascade works on anyway.
    accepts_gray = True
    #: ``detect`` may be called from several threads at once: each thread gets its own cascade (OpenCV's keeps the
    #: image pyramid of its current call in the object, so one cascade must not serve two calls at a time).
    thread_safe = True

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30,
                 min_score: float = 0.0) -> None:
        self._path = haar_cascade_path()
        self._local = threading.local()
        if self._cascade.empty():
            raise DetectorUnavailableError(f"face detector 'opencv': OpenCV could not load the cascade {self._path}; "
                                           f"reinstall opencv-python<5")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.min_score = float(min_score)

    @property
    def _cascade(self) -> cv2.CascadeClassifier:
        """This thread's cascade, loaded on its first call."""
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = cv2.CascadeClassifier(str(self._path))
        return cascade

    def detect(self, frames: np.ndarray, min_size: int | None = None, gray: bool = False,
               max_size: int | None = None) -> list[list[Detection]]:
        """See ``FaceDetector.detect``; scores are ``haar_score`` of the cascade's level weights.

        Args:
            min_size: smallest face side in pixels for this call (default: the detector's ``min_size``); most of the
                cascade's time goes to its smallest scales, so a larger one is much faster.
            gray: ``frames`` is a gray batch (B, H, W) uint8 (the caller converted them already).
            max_size: largest face side in pixels for this call (default: no limit).
        """
        frames = np.asarray(frames)
        if gray and not (frames.ndim == 3 and frames.dtype == np.uint8):
            raise ValueError(f"face detector 'opencv': gray frames must be a uint8 batch of shape (B, H, W), got "
                             f"{frames.dtype} {frames.shape}")
        if not gray:
            frames = _check_frames(frames, "face detector 'opencv'")
        side = max(self.min_size, int(min_size)) if min_size is not None else self.min_size
        out: list[list[Detection]] = []
        for frame in frames:
            image = frame if gray else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            rects, _levels, weights = self._cascade.detectMultiScale3(
                image, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(side, side), maxSize=(int(max_size), int(max_size)) if max_size else (0, 0),
                outputRejectLevels=True)
            rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
            scores = np.atleast_1d(haar_score(np.asarray(weights, dtype=np.float64).reshape(-1)))
            dets = [Detection(np.array([x, y, x + w, y + h], dtype=np.float32), float(s), None)
                    for (x, y, w, h), s in zip(rects, scores) if s >= self.min_score]
            dets.sort(key=lambda d: -d.score)
            out.append(dets)
        return out
