"""The clip cache: one entry per (video, label file and face file content, registration settings), written once,
memory-mapped by trials.

An entry is a folder holding:

* ``frames.npy`` (T, H, W, C) uint8 face crops at the entry's frame rate (black where no face was found),
* ``valid.npy`` (T,) bool and ``scores.npy`` (T,) float32: whether a face was found (score >= threshold), its score,
* ``frame_times.npy`` (T,) seconds of each kept frame in the source video,
* ``labels.npy`` (L, D) float32 on the video's canonical label timeline, rescaled to [-1, 1] (NaN = not annotated),
  ``label_times.npy`` (L,) seconds and ``label_frames.npy`` (L,) the kept frame nearest each label step,
* ``meta.json``: video id, fps, registration, label format, native label scale, dimension names.

Entries are content-addressed, so two datasets that share a video share its entry and changing a registration setting
never serves stale crops. An entry is built in a temporary folder and renamed into place: a reader sees either nothing
or a complete entry, and two processes preparing the same video both succeed (the second rename loses, is discarded).
Video is decoded in bounded chunks, so long videos never sit in memory whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.adapters import read_labels
from trainables.data.decode import iter_frames, open_video
from trainables.data.labels import label_frame_index
from trainables.data.manifest import VideoEntry
from trainables.data.sidecar import read_face_sidecar

CACHE_VERSION = 2
ALIGNMENTS = ("coarse", "fine")
DETECTORS = ("precomputed", "opencv", "face_alignment")


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

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector {self.detector!r} is unknown; allowed: {', '.join(DETECTORS)}")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align {self.align!r} is unknown; allowed: {', '.join(ALIGNMENTS)}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None (the video's own rate), got {self.fps}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must lie in [0, 1], got {self.min_score}")

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, or of a folder's file names, sizes and bytes (folders of face crops)."""
    h = hashlib.sha1()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
    return h.hexdigest()


def entry_key(video: Path, reg: Registration, *sources: Path | str | None) -> str:
    """Content address of a cache entry: the video's bytes, the bytes of the files its labels and crops are built from
    (``sources``: label file, face sidecar; an edited label or face file must not be served from a stale entry) and the
    registration settings."""
    key = file_digest(video)[:20]
    if sources:
        h = hashlib.sha1()
        for src in sources:
            h.update((_source_digest(src) if src is not None else "-").encode())
        key = f"{key}-{h.hexdigest()[:12]}"
    return f"{key}-{reg.digest()}"


def _source_digest(src: Path | str) -> str:
    text = str(src)
    if "{dim}" in text:  # one file per dimension (RECOLA): hash the template and whatever files it names
        parent = Path(text).parent
        return hashlib.sha1(text.encode() + b"".join(file_digest(p).encode() for p in sorted(parent.parent.rglob(
            Path(text).name)) if p.is_file())).hexdigest()
    return file_digest(Path(src))


@dataclass
class CachedVideo:
    """A cache entry opened for reading; ``frames`` is a read-only memory map."""

    video_id: str
    frames: np.ndarray
    valid: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)
    label_frames: np.ndarray | None = None
    label_times: np.ndarray | None = None
    frame_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Entries whose labels are one per kept frame need no mapping files.
        if self.label_frames is None:
            self.label_frames = np.arange(len(self.labels), dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def fps(self) -> float:
        return float(self.meta.get("fps", 25.0))


def open_entry(folder: str | Path, video_id: str | None = None) -> CachedVideo:
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())

    def optional(name: str) -> np.ndarray | None:
        return np.load(folder / name) if (folder / name).is_file() else None

    return CachedVideo(
        video_id=video_id or meta["video_id"],
        frames=np.load(folder / "frames.npy", mmap_mode="r"),
        valid=np.load(folder / "valid.npy"),
        scores=np.load(folder / "scores.npy"),
        labels=np.load(folder / "labels.npy"),
        meta=meta,
        label_frames=optional("label_frames.npy"),
        label_times=optional("label_times.npy"),
        frame_times=optional("frame_times.npy"),
    )


def remove_stale_temporaries(cache_root: str | Path) -> list[Path]:
    """Delete the temporary folders of builds whose process is gone (a prepare run that was killed); folders of
    builds still running in other processes are left alone. Returns what was removed."""
    removed = []
    for tmp in Path(cache_root).glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def kept_frame_indices(num_frames: int, native_fps: float, target_fps: float | None) -> np.ndarray:
    """Source frame indices kept at ``target_fps``: frame k of the output is the source frame nearest k / target_fps.

    Raises:
        ValueError: target_fps above the video's own rate (frames would have to be invented).
    """
    if target_fps is None or abs(target_fps - native_fps) < 1e-6:
        return np.arange(num_frames, dtype=np.int64)
    if target_fps > native_fps + 1e-6:
        raise ValueError(f"target fps {target_fps} exceeds the video's {native_fps:.3f} fps")
    count = int(np.floor((num_frames - 1) * target_fps / native_fps + 1e-9)) + 1
    idx = np.rint(np.arange(count) * native_fps / target_fps).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


class _Cropper:
    """Turns decoded frames into crops with the registration settings, given per-frame boxes and landmarks."""

    def __init__(self, reg: Registration):
        from trainables.data.registration import coarse_crop, fine_align

        self.reg, self.coarse_crop, self.fine_align = reg, coarse_crop, fine_align
        self.h, self.w = reg.hw
        self.c = 1 if reg.grayscale else 3
        self.size = reg.size if isinstance(reg.size, int) else reg.hw  # what the registration functions take

    def __call__(self, frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        if self.reg.align == "fine":
            out = self.fine_align(frame, landmarks, self.size, grayscale=self.reg.grayscale)
        else:
            out = self.coarse_crop(frame, box, self.size, margin=self.reg.margin, grayscale=self.reg.grayscale)
        return np.asarray(out).reshape(self.h, self.w, self.c)


def build_entry(entry: VideoEntry, cache_root: str | Path, reg: Registration, detector: Any = None) -> Path:
    """Decode ``entry``'s video once, find and register its faces and write the cache entry (if not already there).

    Args:
        detector: an already built face detector to reuse across videos (built from ``reg`` when None).
    Returns:
        The entry's folder.
    Raises:
        VideoDecodeError, LabelFileError: the video or its label/face files are unusable (the message names them).
        ValueError: the labels extend more than one second past the video, the face sidecar has fewer rows than the
            video has frames, or the registration needs something the entry lacks (a sidecar, landmarks).
    """
    cache_root = Path(cache_root)
    final = cache_root / entry_key(entry.path, reg, entry.labels, entry.faces)
    if (final / "meta.json").is_file():
        return final

    reader, native_fps, n = open_video(entry.path)
    keep = kept_frame_indices(n, native_fps, reg.fps)
    out_fps = reg.fps or native_fps
    track = read_labels(entry.label_format, entry.labels, fps=native_fps)
    duration = n / native_fps
    beyond = track.times > duration + 1.0 / max(track.rate, 1e-9)
    if (track.times > duration + 1.0).any():
        raise ValueError(f"video {entry.video_id}: labels in {entry.labels} run to {track.times.max():.2f} s but the "
                         f"video lasts {duration:.2f} s ({n} frames at {native_fps:.3f} fps)")
    # Up to one second of trailing labels past the last frame is common (rounding in annotation tools): dropped.
    labels, label_times = track.values[~beyond], track.times[~beyond]
    label_frames = label_frame_index(label_times, out_fps, len(keep))

    tmp = cache_root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        h, w = reg.hw
        c = 1 if reg.grayscale else 3
        frames = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(len(keep), h, w, c))
        if entry.faces is not None and Path(entry.faces).is_dir():
            valid, scores = _from_crops_folder(entry, n, keep, frames, reg)
        else:
            valid, scores = _detect_and_crop(entry, reader, n, keep, frames, reg, detector)
        frames.flush()
        del frames
        np.save(tmp / "valid.npy", valid)
        np.save(tmp / "scores.npy", scores.astype(np.float32))
        np.save(tmp / "frame_times.npy", keep / native_fps)
        np.save(tmp / "labels.npy", labels.astype(np.float32))
        np.save(tmp / "label_times.npy", label_times)
        np.save(tmp / "label_frames.npy", label_frames)
        meta = {"version": CACHE_VERSION, "video_id": entry.video_id, "source": str(entry.path), "fps": out_fps,
                "native_fps": native_fps, "num_frames": int(len(keep)), "registration": asdict(reg),
                "label_format": entry.label_format, "label_rate": track.rate, "label_scale": list(track.scale),
                "dims": list(track.dims)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same entry first: its copy is identical, keep it.
            if not (final / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _from_crops_folder(entry: VideoEntry, n: int, keep: np.ndarray, frames: np.ndarray, reg: Registration):
    """Frames a dataset distributes already cropped and aligned (Aff-Wild2): resized to the registration size."""
    import cv2

    from trainables.data.faces import read_crops_folder

    crops, present = read_crops_folder(entry.faces, num_frames=n)
    h, w = reg.hw
    for t, src in enumerate(keep):
        if present[src]:
            img = cv2.resize(crops[src], (w, h), interpolation=cv2.INTER_AREA)
            if reg.grayscale:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            frames[t] = img.reshape(frames.shape[1:])
    valid = present[keep].copy()
    return valid, valid.astype(np.float32)


def _detect_and_crop(entry: VideoEntry, reader, n: int, keep: np.ndarray, frames: np.ndarray, reg: Registration,
                     detector: Any):
    """Stream the kept frames in chunks: faces from the sidecar or a detector, boxes smoothed over +-``reg.smooth``
    frames (a chunk is cropped once the next chunk's boxes are known), crops written into ``frames``."""
    from trainables.data.faces import create_detector, pick_main_face, smooth_boxes

    t_out = len(keep)
    boxes = np.full((t_out, 4), np.nan, dtype=np.float32)
    scores = np.zeros(t_out, dtype=np.float32)
    lms = np.full((t_out, 5, 2), np.nan, dtype=np.float32)
    if reg.detector == "precomputed":
        if entry.faces is None:
            raise ValueError(f"video {entry.video_id}: detector 'precomputed' needs a faces sidecar (manifest column "
                             "'faces'); or prepare with --detector opencv|face_alignment")
        track = read_face_sidecar(entry.faces)
        if len(track.scores) < n:
            raise ValueError(f"video {entry.video_id}: face sidecar {entry.faces} has {len(track.scores)} rows but "
                             f"the video has {n} frames")
        boxes[:], scores[:], lms[:] = track.boxes[keep], track.scores[keep], track.landmarks[keep]
        if reg.align == "fine" and np.isnan(lms[scores >= reg.min_score]).any():
            raise ValueError(f"video {entry.video_id}: align 'fine' needs 5 landmarks on every face frame, and face "
                             f"sidecar {entry.faces} lacks some")
    elif detector is None:
        detector = create_detector(reg.detector, **({"face_detector": reg.face_detector}
                                                    if reg.detector == "face_alignment" else {}))
    if reg.align == "fine" and reg.detector == "opencv":
        raise ValueError("align 'fine' needs landmarks; the opencv detector gives none (use face_alignment, or a "
                         "sidecar with landmarks)")
    crop = _Cropper(reg)
    # Smoothing is for detector jitter; a precomputed sidecar's boxes are taken as given.
    r = max(0, int(reg.smooth)) if reg.detector != "precomputed" else 0
    pending: list[tuple[int, np.ndarray]] = []
    previous_box = None

    def flush(upto: int) -> None:
        while pending and pending[0][0] <= upto:
            t, frame = pending.pop(0)
            if not (scores[t] >= reg.min_score and np.isfinite(boxes[t]).all()):
                continue
            lo, hi = max(0, t - r), min(t_out, t + r + 1)
            window = np.where((scores[lo:hi] >= reg.min_score)[:, None], boxes[lo:hi], np.nan)
            box = smooth_boxes(window, radius=r)[t - lo] if r else boxes[t]
            frames[t] = crop(frame, box, lms[t])

    for start, chunk in iter_frames(reader, n, indices=keep):
        if reg.detector != "precomputed":
            for k, dets in enumerate(detector.detect(chunk)):
                face = pick_main_face(dets, previous_box)
                if face is not None:
                    boxes[start + k], scores[start + k] = face.box, face.score
                    if face.landmarks5 is not None:
                        lms[start + k] = face.landmarks5
                    previous_box = face.box
        pending.extend((start + k, frame) for k, frame in enumerate(chunk))
        flush(start + len(chunk) - 1 - r)
    flush(t_out)
    valid = (scores >= reg.min_score) & np.isfinite(boxes).all(axis=1)
    if reg.align == "fine":
        valid &= np.isfinite(lms).all(axis=(1, 2))
    return valid, scores
