"""Face detectors chosen by name, main-face selection, box smoothing, and readers for pre-cropped face folders.

Detectors (``create_detector(name, **kwargs)``):

* ``opencv`` -- OpenCV's Haar cascade ``haarcascade_frontalface_default.xml``. Needs nothing downloaded (the cascade
  ships with ``opencv-python<5``), gives boxes and a calibrated score (see ``haar_score``), no landmarks.
* ``face_alignment`` -- the ``face_alignment`` package: a face detector (S3FD by default) plus the 2D FAN landmark
  network; gives boxes, the detector's probability and 5 points reduced from FAN's 68. Its weight files are looked up
  locally (``weights_dir=``, ``$EMOTUNE_FACE_WEIGHTS``, the torch hub cache) and never downloaded here: missing files
  raise ``MissingWeightsError``; ``fetch_weights`` downloads them on a machine with internet.

Faces that a dataset already distributes cropped and aligned (Aff-Wild2's ``cropped_aligned`` folders) are not detected
at all: ``read_crops_folder`` reads them.

Conventions: frames are uint8 RGB arrays (B, H, W, 3); boxes are x1, y1, x2, y2 in pixels; the 5 landmarks are ordered
left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner, "left" meaning smaller x in the image
(the order of ``trainables.data.sidecar.FaceTrack``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable
from urllib.parse import urlparse

import cv2
import numpy as np

from trainables.registry import Registry

#: Environment variable naming a folder that holds face-alignment weight files.
WEIGHTS_ENV = "EMOTUNE_FACE_WEIGHTS"


# ---------------------------------------------------------------------------
# Data types and the registry
# ---------------------------------------------------------------------------

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
            "trainables.data.sidecar.read_face_sidecar or cropped frames with read_crops_folder)"
            if name == "precomputed" else "")
    return _DETECTORS.get(name, hint)(**kwargs)


def _check_frames(frames: np.ndarray, who: str) -> np.ndarray:
    """Validate a batch of frames: (B, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{who}: frames must be a uint8 RGB batch of shape (B, H, W, 3), got {frames.dtype} "
                         f"{frames.shape} (add a batch axis for a single frame: frames[None])")
    return frames


class DetectorUnavailableError(RuntimeError):
    """A detector cannot run in this environment (missing file or package); the message says what to install."""


# ---------------------------------------------------------------------------
# Main face and smoothing
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# OpenCV Haar cascade
# ---------------------------------------------------------------------------

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

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30,
                 min_score: float = 0.0) -> None:
        path = haar_cascade_path()
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorUnavailableError(f"face detector 'opencv': OpenCV could not load the cascade {path}; "
                                           f"reinstall opencv-python<5")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.min_score = float(min_score)

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """See ``FaceDetector.detect``; scores are ``haar_score`` of the cascade's level weights."""
        frames = _check_frames(frames, "face detector 'opencv'")
        out: list[list[Detection]] = []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            rects, _levels, weights = self._cascade.detectMultiScale3(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size), outputRejectLevels=True)
            rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
            scores = np.atleast_1d(haar_score(np.asarray(weights, dtype=np.float64).reshape(-1)))
            dets = [Detection(np.array([x, y, x + w, y + h], dtype=np.float32), float(s), None)
                    for (x, y, w, h), s in zip(rects, scores) if s >= self.min_score]
            dets.sort(key=lambda d: -d.score)
            out.append(dets)
        return out


# ---------------------------------------------------------------------------
# face_alignment weights
# ---------------------------------------------------------------------------

class MissingWeightsError(FileNotFoundError):
    """Weight files needed by a detector are not on this machine.

    Attributes:
        missing: file names that were not found.
        folders: folders that were searched, in order.
    """

    def __init__(self, message: str, missing: list[str], folders: list[Path]) -> None:
        super().__init__(message)
        self.missing = missing
        self.folders = folders


@dataclass(frozen=True)
class WeightFile:
    """A weight file face_alignment needs: its file name (as the package caches it), the URL it comes from, and what
    it is for."""

    name: str
    url: str
    purpose: str


#: face_alignment detectors this project supports (``dlib`` needs dlib and downloads nothing; ``folder`` reads boxes
#: from files; neither fits here).
FA_FACE_DETECTORS = ("sfd", "blazeface", "retinaface", "yunet", "scrfd")


def _url_name(url: str) -> str:
    # torch.hub and face_alignment name a cached file after the URL path's last part (query strings dropped).
    return os.path.basename(urlparse(url).path)


def weight_files(face_detector: str = "sfd", back_model: bool = False) -> list[WeightFile]:
    """The weight files face_alignment 1.5 loads for 2D landmarks with ``face_detector``.

    Names and URLs are read from the installed package's own tables, so they follow the package version.

    Args:
        face_detector: one of ``FA_FACE_DETECTORS``.
        back_model: for ``blazeface``, the back-camera model (256 px input) instead of the front one.
    Returns:
        The FAN landmark network first, then the detector's file(s).
    Raises:
        ValueError: unsupported detector name.
    """
    if face_detector not in FA_FACE_DETECTORS:
        raise ValueError(f"face_alignment face detector {face_detector!r} is not supported; valid: "
                         f"{', '.join(FA_FACE_DETECTORS)}")
    from face_alignment import api as fa_api  # imported here: the package is heavy (numba, torch)

    fan_url = fa_api.models_urls["2DFAN-4"]
    files = [WeightFile(_url_name(fan_url), fan_url, "FAN 2D landmark network (2DFAN-4)")]
    if face_detector == "sfd":
        from face_alignment.detection.sfd import sfd_detector as mod
        url = mod.models_urls["s3fd"]
        files.append(WeightFile(_url_name(url), url, "S3FD face detector"))
    elif face_detector == "blazeface":
        from face_alignment.detection.blazeface import blazeface_detector as mod
        kind = "blazeface_back" if back_model else "blazeface"
        for part, what in (("weights", "BlazeFace detector weights"), ("anchors", "BlazeFace anchors")):
            url = mod.models_urls[f"{kind}_{part}"]
            files.append(WeightFile(_url_name(url), url, what + (" (back model)" if back_model else "")))
    elif face_detector == "retinaface":
        from face_alignment.detection.retinaface import retinaface_detector as mod
        url = mod.models_urls["retinaface_mobilenet0.25"]
        files.append(WeightFile(_url_name(url), url, "RetinaFace MobileNet-0.25 face detector"))
    elif face_detector == "yunet":
        from face_alignment.detection.yunet import yunet_detector as mod
        # The package stores this one under an explicit file name (load_file_from_url(..., file_name=...)).
        files.append(WeightFile("face_detection_yunet_2023mar.onnx", mod.model_url, "YuNet face detector (ONNX)"))
    else:  # scrfd
        from face_alignment.detection.scrfd import scrfd_detector as mod
        files.append(WeightFile("scrfd_2.5g_bnkps.onnx", mod.model_url, "SCRFD 2.5G face detector (ONNX, needs "
                                                                        "onnxruntime)"))
    return files


def weight_folders(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for weight files, in order: ``weights_dir`` (if given), ``$EMOTUNE_FACE_WEIGHTS`` (if set),
    then the torch hub cache ``torch.hub.get_dir()/checkpoints`` (where face_alignment itself caches downloads)."""
    import torch

    folders: list[Path] = []
    if weights_dir is not None:
        folders.append(Path(weights_dir).expanduser())
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    if env:
        folders.append(Path(env).expanduser())
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    unique: list[Path] = []
    for f in folders:
        if f not in unique:
            unique.append(f)
    return unique


def resolve_weights(face_detector: str = "sfd", weights_dir: str | Path | None = None,
                    back_model: bool = False) -> dict[str, Path]:
    """Find every weight file the face_alignment detector needs, without downloading anything.

    Args:
        face_detector: one of ``FA_FACE_DETECTORS``.
        weights_dir: a folder searched first (see ``weight_folders``).
        back_model: BlazeFace back model.
    Returns:
        File name -> path of the first folder holding it.
    Raises:
        MissingWeightsError: one or more files are in none of the folders (the message lists each file, its URL and
            the folders, and how to fetch them).
    """
    folders = weight_folders(weights_dir)
    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    for wf in weight_files(face_detector, back_model):
        hit = next((f / wf.name for f in folders if (f / wf.name).is_file()), None)
        if hit is None:
            missing.append(wf)
        else:
            found[wf.name] = hit
    if missing:
        lines = "\n".join(f"  - {wf.name} ({wf.purpose}; from {wf.url})" for wf in missing)
        where = "\n".join(f"  - {f}" for f in folders)
        raise MissingWeightsError(
            f"face detector 'face_alignment' (face_detector={face_detector!r}) needs weight files that are not on this "
            f"machine, and nothing is downloaded at run time:\n{lines}\nPut each file in one of these folders:\n{where}\n"
            f"(or pass weights_dir= / set ${WEIGHTS_ENV}). On a machine with internet, "
            f"`emotune data fetch-weights --to DIR` downloads them into DIR; copy DIR here and set {WEIGHTS_ENV}=DIR.",
            [wf.name for wf in missing], folders)
    return found


def fetch_weights(to_dir: str | Path, detector: str = "sfd", *, back_model: bool = False, dry_run: bool = False,
                  progress: bool = True) -> list[Path]:
    """Download the weight files of the face_alignment detector into ``to_dir`` (for ``emotune data fetch-weights``).

    Files already in ``to_dir`` are kept. Each download goes to a temporary name first and is renamed when complete,
    so an interrupted download never leaves a truncated file under the real name.

    Args:
        to_dir: destination folder (created).
        detector: face_alignment face detector, one of ``FA_FACE_DETECTORS``.
        back_model: BlazeFace back model.
        dry_run: only compute the destination paths; create and download nothing.
        progress: show download progress bars.
    Returns:
        Destination path of every needed file (FAN first).
    Raises:
        ValueError: unsupported detector.
        OSError / urllib errors: a download failed (the partial file is removed).
    """
    to_dir = Path(to_dir).expanduser()
    files = weight_files(detector, back_model)
    paths = [to_dir / wf.name for wf in files]
    if dry_run:
        return paths
    import torch

    to_dir.mkdir(parents=True, exist_ok=True)
    for wf, dst in zip(files, paths):
        if dst.is_file():
            continue
        part = dst.with_name(dst.name + ".part")
        try:
            torch.hub.download_url_to_file(wf.url, str(part), progress=progress)
            part.replace(dst)
        finally:
            part.unlink(missing_ok=True)
    return paths


# ---------------------------------------------------------------------------
# face_alignment detector
# ---------------------------------------------------------------------------

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
            state = torch.load(self._emotune_fan_path, map_location=device, weights_only=True)
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


# ---------------------------------------------------------------------------
# Pre-cropped frames (Aff-Wild2 "cropped_aligned")
# ---------------------------------------------------------------------------

_CROP_NAME = re.compile(r"^(\d+)\.(jpg|jpeg|png|bmp)$", re.IGNORECASE)


def read_crops_folder(folder: str | Path, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder of already cropped and aligned face frames, as Aff-Wild2 distributes them.

    Files are named by 1-based frame number (``00001.jpg``, ``00002.jpg``, ...; any number of digits, .jpg/.jpeg/
    .png/.bmp); a missing number means no face on that frame. Hidden files (``.DS_Store``) are ignored.

    Args:
        folder: the folder.
        num_frames: the video's frame count; default the largest frame number (frames after the last file cannot be
            known from the folder alone).
    Returns:
        frames (T, H, W, 3) uint8 RGB (black where there is no file) and valid (T,) bool.
    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no image in the folder; a file whose name is not a frame number; frame number 0; two files for the
            same frame; a frame number beyond ``num_frames``; images of different sizes; an unreadable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"face crops folder {folder} does not exist")
    numbered: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        m = _CROP_NAME.match(p.name)
        if m is None:
            raise ValueError(f"face crops folder {folder}: file {p.name!r} is not named by frame number; allowed: "
                             f"1-based numbers with .jpg/.jpeg/.png/.bmp, e.g. 00001.jpg")
        idx = int(m.group(1))
        if idx == 0:
            raise ValueError(f"face crops folder {folder}: file {p.name!r} has frame number 0, but numbers are 1-based")
        if idx in numbered:
            raise ValueError(f"face crops folder {folder}: files {numbered[idx].name!r} and {p.name!r} are both frame "
                             f"{idx}")
        numbered[idx] = p
    if not numbered:
        raise ValueError(f"face crops folder {folder} contains no frame images (expected 00001.jpg, 00002.jpg, ...)")
    last = max(numbered)
    total = last if num_frames is None else int(num_frames)
    if last > total:
        raise ValueError(f"face crops folder {folder}: file {numbered[last].name!r} is frame {last} but the video has "
                         f"{total} frames")
    frames: np.ndarray | None = None
    valid = np.zeros(total, dtype=bool)
    for idx in sorted(numbered):
        path = numbered[idx]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"face crops folder {folder}: image {path.name!r} cannot be read")
        if frames is None:
            frames = np.zeros((total, *img.shape), dtype=np.uint8)
        elif img.shape != frames.shape[1:]:
            raise ValueError(f"face crops folder {folder}: image {path.name!r} is {img.shape[1]}x{img.shape[0]} but "
                             f"the first one is {frames.shape[2]}x{frames.shape[1]}; all crops must have one size")
        frames[idx - 1] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        valid[idx - 1] = True
    assert frames is not None
    return frames, valid


__all__ = [
    "Detection", "FaceDetector", "register_detector", "create_detector", "list_detectors", "pick_main_face",
    "smooth_boxes", "landmarks68_to_5", "haar_score", "haar_cascade_path", "OpenCVHaarDetector",
    "FaceAlignmentDetector", "MissingWeightsError", "DetectorUnavailableError", "WeightFile", "weight_files",
    "weight_folders", "resolve_weights", "fetch_weights", "read_crops_folder", "FA_FACE_DETECTORS", "WEIGHTS_ENV",
]
