"""The ``face_alignment`` face detector: the ``face_alignment`` package's face detector (S3FD by default) plus the 2D
FAN landmark network; gives boxes, the detector's probability and 5 points reduced from FAN's 68.

Fully offline: weight files are found by :mod:`trainables.prepare.faces.weights` and passed to the package as explicit
paths, so it never downloads. Imports of the package itself (torch, numba) happen when a detector is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trainables.prepare.faces.base import Detection, DetectorUnavailableError, _check_frames, register_detector
from trainables.prepare.faces.weights import resolve_weights, weight_files

__all__ = ["FaceAlignmentDetector", "MIN_DETECT_SIDE", "landmarks68_to_5"]


def landmarks68_to_5(lm68: np.ndarray) -> np.ndarray:
    """Reduce 68 iBUG landmarks to the 5 registration points.

    Eye centres are the means of the eye contours (points 36-41 and 42-47, 0-based), the nose tip is point 30 and the
    mouth corners are points 48 and 54. For a frontal, unmirrored face points 36-41 and 48 lie on the image's left.

    Args:
        lm68: (68, 2) or (68, 3) landmarks (a z column is dropped).
    Returns:
        (5, 2) float32.
    Raises:
        ValueError: not 68 points.
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 2 or lm68.shape[0] != 68 or lm68.shape[1] < 2:
        raise ValueError(f"landmarks68_to_5: expected (68, 2) landmarks, got {lm68.shape}")
    xy = lm68[:, :2]
    return np.stack([xy[36:42].mean(axis=0), xy[42:48].mean(axis=0), xy[30], xy[48], xy[54]]).astype(np.float32)


_LOCAL_FA_CLASS: type | None = None
#: Frames smaller than this (after the ``detect_max_side`` reduction) are padded for detection.
MIN_DETECT_SIDE = 64


def _local_face_alignment_class() -> type:
    """A ``FaceAlignment`` subclass that loads FAN from an explicit file instead of ``load_file_from_url``.

    face_alignment 1.5 has no argument for FAN's weight path (only the detectors take ``path_to_detector``); it always
    resolves FAN in the torch hub cache and downloads when absent. Overriding its loader lets a plain weights folder
    work without changing the process-wide torch hub dir (other libraries, e.g. timm, read it too) and without copying
    or linking files, and guarantees the FAN loader never reaches the network.
    """
    global _LOCAL_FA_CLASS
    if _LOCAL_FA_CLASS is not None:
        return _LOCAL_FA_CLASS
    import face_alignment
    import torch
    from face_alignment.api import FaceAlignment
    from face_alignment.models import FAN

    if not callable(getattr(FaceAlignment, "_load_native", None)):
        raise DetectorUnavailableError(
            f"face_alignment {getattr(face_alignment, '__version__', '?')} has no FaceAlignment._load_native; this "
            f"project supports face-alignment==1.5.0")

    class _LocalFaceAlignment(FaceAlignment):
        def __init__(self, *args: Any, fan_path: str, **kwargs: Any) -> None:
            self._emotune_fan_path = fan_path  # read by _load_native, which runs inside super().__init__
            super().__init__(*args, **kwargs)

        def _load_native(self, network_name, network_size, device, dtype):  # noqa: D401 - same contract as the base
            net = FAN(network_size)
            from trainables.torchfile import load_torch_file

            state = load_torch_file(self._emotune_fan_path, map_location=device)
            net.load_state_dict(state)
            net.to(device, dtype=dtype)
            net.eval()
            return net

    _LOCAL_FA_CLASS = _LocalFaceAlignment
    return _LOCAL_FA_CLASS


def _box_rows(raw: Any) -> np.ndarray:
    """Detector output for one frame (list of rows / array, possibly empty) as an (N, 5) float array."""
    arr = np.asarray(raw if len(raw) else np.zeros((0, 5)), dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 5))
    arr = arr.reshape(len(arr), -1)[:, :5]
    return arr[np.isfinite(arr).all(axis=1) & (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])]


@register_detector("face_alignment")
class FaceAlignmentDetector:
    """Face detector + 2D FAN landmarks from the ``face_alignment`` package, fully offline.

    Weight files (see ``weight_files``) are looked up in ``weights_dir``, ``$EMOTUNE_FACE_WEIGHTS`` and
    ``torch.hub.get_dir()/checkpoints`` (first hit wins) and passed to the package as explicit paths, so it never
    downloads; nothing global (torch hub dir) is changed.

    Args:
        face_detector: face_alignment's detector, one of ``FA_FACE_DETECTORS`` (default S3FD).
        device: torch device string ("cpu", "cuda", "cuda:1", "mps"); default cuda when available.
        weights_dir: folder searched first for weight files.
        flip_input: also run FAN on the mirrored crop and average (slower, slightly steadier landmarks).
        max_faces: at most this many detections per frame (best scores) get landmarks, which bounds FAN's cost on
            crowded or noisy frames.
        batch_size: frames per detector forward pass.
        detect_max_side: frames whose longer side exceeds this are downscaled for detection only (boxes are mapped
            back; landmarks use the full frame); None detects at full resolution. Faces in emotion videos are large,
            and S3FD at full HD is slow on CPU.
        back_model: BlazeFace back-camera model.
        detector_kwargs: extra keyword arguments for the package's detector (e.g. ``filter_threshold`` for sfd).
    Raises:
        MissingWeightsError: a weight file is missing (nothing is downloaded).
        ValueError: unsupported ``face_detector``.
    """

    name = "face_alignment"
    gives_landmarks = True

    def __init__(self, face_detector: str = "sfd", *, device: str | None = None,
                 weights_dir: str | Path | None = None, flip_input: bool = False, max_faces: int = 4,
                 batch_size: int = 8, detect_max_side: int | None = 640, back_model: bool = False,
                 detector_kwargs: dict[str, Any] | None = None) -> None:
        import torch

        paths = resolve_weights(face_detector, weights_dir, back_model)  # raises before anything heavy is built
        files = weight_files(face_detector, back_model)
        from face_alignment import LandmarksType

        det_kwargs = dict(detector_kwargs or {})
        det_kwargs["path_to_detector"] = str(paths[files[1].name])
        if face_detector == "blazeface":
            det_kwargs["path_to_anchor"] = str(paths[files[2].name])
            det_kwargs["back_model"] = back_model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.face_detector = face_detector
        self.max_faces = max(1, int(max_faces))
        self.batch_size = max(1, int(batch_size))
        self.detect_max_side = detect_max_side
        cls = _local_face_alignment_class()
        # compile=False: torch.compile's warm-up costs ~25 s per process and gains little for a prepare pass.
        self._fa = cls(LandmarksType.TWO_D, device=self.device, flip_input=flip_input, face_detector=face_detector,
                       face_detector_kwargs=det_kwargs, compile=False, fan_path=str(paths[files[0].name]))

    def _detect_boxes(self, chunk: np.ndarray) -> list[np.ndarray]:
        """Run the package's batched detector on (B, H, W, 3) frames; returns per frame (N, 5) x1, y1, x2, y2, score
        in the frames' own pixel coordinates."""
        import torch

        h, w = chunk.shape[1:3]
        scale, sx, sy = 1.0, 1.0, 1.0
        if self.detect_max_side and max(h, w) > self.detect_max_side:
            scale = self.detect_max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            chunk = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in chunk])
            sx, sy = w / size[0], h / size[1]
        dh, dw = chunk.shape[1:3]
        if min(dh, dw) < MIN_DETECT_SIDE:
            # S3FD's deepest layers need >= 32 px of input; pad black at the bottom/right, which leaves box
            # coordinates unchanged, and drop boxes centred in the padding below.
            ph, pw = max(dh, MIN_DETECT_SIDE), max(dw, MIN_DETECT_SIDE)
            padded = np.zeros((len(chunk), ph, pw, 3), dtype=np.uint8)
            padded[:, :dh, :dw] = chunk
            chunk = padded
        batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)
        raw = self._fa.face_detector.detect_from_batch(batch)
        out = []
        for r in raw:
            rows = _box_rows(r)
            cx, cy = (rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2
            rows = rows[(cx >= 0) & (cx < dw) & (cy >= 0) & (cy < dh)]
            if scale != 1.0 and len(rows):
                rows[:, [0, 2]] *= sx
                rows[:, [1, 3]] *= sy
            out.append(rows)
        return out

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """See ``FaceDetector.detect``; scores are the detector's probabilities, landmarks come from FAN."""
        frames = _check_frames(frames, "face detector 'face_alignment'")
        out: list[list[Detection]] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            for frame, rows in zip(chunk, self._detect_boxes(chunk)):
                if not len(rows):
                    out.append([])
                    continue
                rows = rows[np.argsort(-rows[:, 4], kind="stable")][: self.max_faces]
                lms = self._fa.get_landmarks_from_image(frame, detected_faces=[r for r in rows])
                dets = []
                for r, lm in zip(rows, lms or []):
                    dets.append(Detection(r[:4].astype(np.float32), float(np.clip(r[4], 0.0, 1.0)),
                                          landmarks68_to_5(lm)))
                out.append(dets)
        return out
