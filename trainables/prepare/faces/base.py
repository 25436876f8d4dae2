"""What every face detector offers, and the registry that picks one by name.

``create_detector(name, **kwargs)`` builds a registered detector; each backend lives in its own module and registers
itself with ``@register_detector`` (``opencv``: :mod:`trainables.prepare.faces.opencv`, ``face_alignment``:
:mod:`trainables.prepare.faces.face_alignment`); importing :mod:`trainables.prepare.faces` imports them all.

Conventions: frames are uint8 RGB arrays (B, H, W, 3); boxes are x1, y1, x2, y2 in pixels; the 5 landmarks are ordered
left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner, "left" meaning smaller x in the image
(the order of ``trainables.prepare.sidecar.FaceTrack``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from trainables.errors import DataError
from trainables.registry import Registry

__all__ = ["Detection", "DetectorUnavailableError", "FaceDetector", "create_detector", "list_detectors",
           "register_detector"]


@dataclass
class Detection:
    """One face found on one frame.

    Attributes:
        box: (4,) float32 x1, y1, x2, y2 in pixels of the frame.
        score: detection confidence in [0, 1] (comparable to the 0.8 threshold of the registration settings).
        landmarks5: (5, 2) float32 x, y of left eye centre, right eye centre, nose tip, left mouth corner, right mouth
            corner, or None when the detector gives no landmarks.
    """

    box: np.ndarray
    score: float
    landmarks5: np.ndarray | None = None


@runtime_checkable
class FaceDetector(Protocol):
    """What every detector offers: a name, whether it gives landmarks, and batched detection."""

    name: str
    gives_landmarks: bool

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """Find faces on a batch of frames.

        Args:
            frames: (B, H, W, 3) uint8 RGB.
        Returns:
            One list per frame (possibly empty), best score first.
        """
        ...


_DETECTORS: Registry[Callable[..., FaceDetector]] = Registry("face detector")


def register_detector(name: str) -> Callable[[Callable[..., FaceDetector]], Callable[..., FaceDetector]]:
    """Class decorator adding a detector factory to the registry under ``name``.

    Raises:
        ValueError: ``name`` is already registered (two detectors must not silently shadow each other).
    """
    return _DETECTORS.register(name)


def list_detectors() -> list[str]:
    """Names accepted by ``create_detector``, sorted."""
    return _DETECTORS.names()


def create_detector(name: str, **kwargs: Any) -> FaceDetector:
    """Build the detector registered under ``name`` with ``kwargs``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    # "precomputed" is a registration source, not a detector over pixels.
    hint = (" ('precomputed' faces are not detected: read boxes/landmarks with "
            "trainables.prepare.sidecar.read_face_sidecar or cropped frames with "
            "trainables.prepare.faces.precomputed.read_crops_folder)"
            if name == "precomputed" else "")
    return _DETECTORS.get(name, hint)(**kwargs)


def _check_frames(frames: np.ndarray, who: str) -> np.ndarray:
    """Validate a batch of frames: (B, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{who}: frames must be a uint8 RGB batch of shape (B, H, W, 3), got {frames.dtype} "
                         f"{frames.shape} (add a batch axis for a single frame: frames[None])")
    return frames


class DetectorUnavailableError(DataError):
    """A detector cannot run in this environment (missing file or package); the message says what to install."""
