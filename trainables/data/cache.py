"""The clip cache: one entry per (video, label file and face file content, registration settings), written once,
memory-mapped by trials.

An entry is a folder holding ``frames.npy`` (T, S, S, C) uint8 face crops, ``valid.npy`` (T,) bool, ``scores.npy`` (T,),
``labels.npy`` (T, D) float32 on the video's canonical label timeline (NaN = not annotated) and ``meta.json``. Entries
are content-addressed, so two datasets that share a video share its entry, and changing a registration setting never
serves stale crops. An entry is built in a temporary folder and renamed into place: a reader sees either nothing or a
complete entry, and two processes preparing the same video both succeed (the second rename loses and is discarded).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from trainables.data.decode import iter_frames, open_video
from trainables.data.manifest import VideoEntry
from trainables.data.sidecar import read_face_sidecar, read_frame_labels

CACHE_VERSION = 1


@dataclass(frozen=True)
class Registration:
    """Coarse face registration settings: crop the detected box enlarged by ``margin`` (a fraction of its size) to a
    square, resize to ``size``, and mark frames whose detection score is below ``min_score`` as invalid."""

    size: int = 64
    margin: float = 0.15
    min_score: float = 0.8
    grayscale: bool = False
    detector: str = "precomputed"

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def entry_key(video: Path, reg: Registration, *sources: Path | None) -> str:
    """Content address of a cache entry: the video's bytes, the bytes of the files its labels / crops are built from
    (``sources``: label file, face sidecar; an edited label or face file must not be served from a stale entry) and the
    registration settings."""
    key = file_digest(video)[:20]
    if sources:
        h = hashlib.sha1()
        for src in sources:
            h.update((file_digest(Path(src)) if src is not None else "-").encode())
        key = f"{key}-{h.hexdigest()[:12]}"
    return f"{key}-{reg.digest()}"


@dataclass
class CachedVideo:
    """A cache entry opened for reading; ``frames`` is a read-only memory map."""

    video_id: str
    frames: np.ndarray
    valid: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def open_entry(folder: str | Path, video_id: str | None = None) -> CachedVideo:
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    return CachedVideo(
        video_id=video_id or meta["video_id"],
        frames=np.load(folder / "frames.npy", mmap_mode="r"),
        valid=np.load(folder / "valid.npy"),
        scores=np.load(folder / "scores.npy"),
        labels=np.load(folder / "labels.npy"),
        meta=meta,
    )


def square_crop_box(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Square box around ``box`` (x1, y1, x2, y2) enlarged by ``margin`` of its longer side, in integer pixels.
    Parts outside the frame are padded with black by the caller, so the face keeps its scale at the borders."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = side / 2.0
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def crop_face(frame: np.ndarray, box: np.ndarray, reg: Registration) -> np.ndarray:
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = square_crop_box(box, reg.margin, w, h)
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    crop = cv2.resize(frame[y1:y2, x1:x2], (reg.size, reg.size), interpolation=cv2.INTER_AREA)
    if reg.grayscale:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[..., None]
    return crop


def build_entry(entry: VideoEntry, cache_root: str | Path, reg: Registration) -> Path:
    """Decode ``entry``'s video once, crop its faces and write the cache entry (if not already there).

    Returns:
        The entry's folder.
    Raises:
        VideoDecodeError, LabelFileError: the video or its label/face files are unusable (the message names them).
        ValueError: the face sidecar or label file has fewer rows than the video has frames.
    """
    if reg.detector != "precomputed":
        raise ValueError(f"detector {reg.detector!r} is not available; available: precomputed")
    cache_root = Path(cache_root)
    final = cache_root / entry_key(entry.path, reg, entry.labels, entry.faces)
    if (final / "meta.json").is_file():
        return final

    reader, fps, n = open_video(entry.path)
    labels = read_frame_labels(entry.labels)
    if entry.faces is None:
        raise ValueError(f"video {entry.video_id}: detector 'precomputed' needs a faces sidecar in the manifest")
    track = read_face_sidecar(entry.faces)
    for name, rows in (("face sidecar", len(track.scores)), ("label file", len(labels))):
        if rows < n:
            raise ValueError(f"video {entry.video_id}: {name} has {rows} rows but the video has {n} frames")
    labels = labels[:n]
    valid = (track.scores[:n] >= reg.min_score) & np.isfinite(track.boxes[:n]).all(axis=1)

    tmp = cache_root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        channels = 1 if reg.grayscale else 3
        frames = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, reg.size, reg.size, channels))
        for start, chunk in iter_frames(reader, n):
            for k, frame in enumerate(chunk):
                t = start + k
                if valid[t]:
                    frames[t] = crop_face(frame, track.boxes[t], reg).reshape(reg.size, reg.size, channels)
                else:
                    frames[t] = 0
        frames.flush()
        del frames
        np.save(tmp / "valid.npy", valid)
        np.save(tmp / "scores.npy", track.scores[:n])
        np.save(tmp / "labels.npy", labels.astype(np.float32))
        meta = {"version": CACHE_VERSION, "video_id": entry.video_id, "source": str(entry.path), "fps": fps,
                "num_frames": n, "registration": asdict(reg), "label_rate": fps}
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
