"""Writing cache entries: decode a video once, find and register its faces, and write the entry trials read (the
format is :mod:`trainables.data.cache`).

Entries are content-addressed by (video bytes, label and face file bytes, registration settings), so two datasets that
share a video share its entry and changing a registration setting never serves stale crops. An entry is built in a
temporary folder and renamed into place: a reader sees either nothing or a complete entry, and two processes preparing
the same video both succeed (the second rename loses, is discarded). Video is decoded in bounded chunks, so long videos
never sit in memory whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.cache import CACHE_VERSION, kept_frame_indices
from trainables.data.labels import label_frame_index
from trainables.prepare.adapters import read_labels
from trainables.prepare.decode import check_frame_size, iter_frames, open_video
from trainables.prepare.manifest import ManifestError, VideoEntry
from trainables.prepare.registration import Registration, coarse_crop, fine_align
from trainables.prepare.sidecar import LabelFileError, read_face_sidecar

__all__ = ["build_entry", "detect_and_crop", "entry_key", "file_digest", "remove_stale_temporaries"]


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


class _Cropper:
    """Turns decoded frames into crops with the registration settings, given per-frame boxes and landmarks."""

    def __init__(self, reg: Registration):
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
        VideoDecodeError: the video cannot be decoded (the message names it).
        VideoTooSmallError: its frames are too small to find and crop faces in (``trainables.shapes.MIN_FRAME_SIDE``).
        LabelFileError: the label or face file is unusable, the labels extend more than one second past the video, the
            face sidecar has fewer rows than the video has frames, or lacks the landmarks ``align='fine'`` needs.
        ManifestError: the registration reads a faces sidecar the manifest does not give.
        DataError: ``reg.fps`` exceeds the video's frame rate.
    """
    cache_root = Path(cache_root)
    final = cache_root / entry_key(entry.path, reg, entry.labels, entry.faces)
    if (final / "meta.json").is_file():
        return final

    reader, native_fps, n = open_video(entry.path)
    crops_folder = entry.faces is not None and Path(entry.faces).is_dir()
    if not crops_folder:  # the frames themselves are searched and cropped
        check_frame_size(entry.path)
    keep = kept_frame_indices(n, native_fps, reg.fps)
    out_fps = reg.fps or native_fps
    if entry.labels is None:  # unlabelled (pretraining only): no label steps
        track = None
        labels, label_times = np.zeros((0, 0), np.float32), np.zeros(0)
    else:
        track = read_labels(entry.label_format, entry.labels, fps=native_fps)
        duration = n / native_fps
        beyond = track.times > duration + 1.0 / max(track.rate, 1e-9)
        if (track.times > duration + 1.0).any():
            raise LabelFileError(f"video {entry.video_id}: labels in {entry.labels} run to {track.times.max():.2f} s "
                                 f"but the video lasts {duration:.2f} s ({n} frames at {native_fps:.3f} fps)")
        # Up to one second of trailing labels past the last frame is common (rounding in annotation tools): dropped.
        labels, label_times = track.values[~beyond], track.times[~beyond]
    label_frames = label_frame_index(label_times, out_fps, len(keep))

    tmp = cache_root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        h, w = reg.hw
        c = 1 if reg.grayscale else 3
        frames = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(len(keep), h, w, c))
        if crops_folder:
            valid, scores = _from_crops_folder(entry, n, keep, frames, reg)
        else:
            valid, scores = detect_and_crop(entry, reader, n, keep, frames, reg, detector)
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
                "labelled": track is not None, "label_format": entry.label_format,
                "label_rate": track.rate if track else None, "label_scale": list(track.scale) if track else None,
                "dims": list(track.dims) if track else []}
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

    from trainables.prepare.faces import read_crops_folder

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


#: Frames per decoded chunk, and chunks decoded ahead of detection (memory: (DECODE_AHEAD + 4) chunks of frames with
#: the detection thread, about 530 MB at 720p, plus the frames waiting for their boxes).
CHUNK_FRAMES = 32
DECODE_AHEAD = 2
#: Chunks of crops queued for the writer thread.
WRITE_AHEAD = 2

_END = object()


class _Prefetch:
    """Runs an iterator (decord decoding or OpenCV detection, which release the GIL) in a thread, ``depth`` items
    ahead of the consumer; its exceptions are raised in the consumer. ``close`` stops it early (and ends a consumer
    waiting for its next item: the iterator of a later stage)."""

    def __init__(self, iterator, depth: int = DECODE_AHEAD, name: str = "emotune-decode"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
        while True:  # the thread is gone: drop what it left, and end a consumer still waiting (a later stage)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(_END)


class _Writer:
    """Crops frames and writes them into the entry in one background thread, at most ``depth`` batches behind."""

    def __init__(self, crop: _Cropper, frames: np.ndarray, depth: int = WRITE_AHEAD):
        self.crop, self.frames, self.depth = crop, frames, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotune-crop")
        self._futures: deque = deque()

    def _write(self, items) -> None:
        for t, frame, box, lm in items:
            self.frames[t] = self.crop(frame, box, lm)

    def submit(self, items: list) -> None:
        if items:
            self._futures.append(self._pool.submit(self._write, items))
        while len(self._futures) > self.depth or (self._futures and self._futures[0].done()):
            self._futures.popleft().result()

    def close(self, wait: bool = True) -> None:
        try:
            while wait and self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def detect_and_crop(entry: VideoEntry, reader, n: int, keep: np.ndarray, frames: np.ndarray, reg: Registration,
                    detector: Any):
    """Stream the kept frames in chunks: faces from the sidecar or a detector, boxes smoothed over +-``reg.smooth``
    frames (a frame is cropped once the boxes ``reg.smooth`` frames after it are known), crops written into
    ``frames``.

    Threads share the work (decord and OpenCV release the GIL): one decodes chunks ahead; with a detector that may be
    called from two threads at once (``thread_safe``: the Haar cascade), one detects the key frames of the chunks
    decoded so far (``SparseFaceTrack.detect_keys``, which depend on earlier key frames only); this one carries the
    boxes between key frames and detects the frames between that need it (``SparseFaceTrack.resolve``; the whole
    ``feed`` when the detector is not thread-safe); one crops and writes. Key frames are detected while this thread
    resolves earlier spans, so the two cores stay busy between detector calls. Memory stays bounded: a few chunks of
    decoded frames, and the frames since the last key frame.
    """
    from trainables.prepare.faces import SparseFaceTrack, create_detector, smooth_boxes

    t_out = len(keep)
    boxes = np.full((t_out, 4), np.nan, dtype=np.float32)
    scores = np.zeros(t_out, dtype=np.float32)
    lms = np.full((t_out, 5, 2), np.nan, dtype=np.float32)
    track = None
    if reg.detector == "precomputed":
        if entry.faces is None:
            raise ManifestError(f"video {entry.video_id}: detector 'precomputed' needs a faces sidecar (manifest "
                                "column 'faces'); or prepare with --detector opencv|face_alignment")
        sidecar = read_face_sidecar(entry.faces)
        if len(sidecar.scores) < n:
            raise LabelFileError(f"video {entry.video_id}: face sidecar {entry.faces} has {len(sidecar.scores)} rows "
                                 f"but the video has {n} frames")
        boxes[:], scores[:], lms[:] = sidecar.boxes[keep], sidecar.scores[keep], sidecar.landmarks[keep]
        if reg.align == "fine" and np.isnan(lms[scores >= reg.min_score]).any():
            raise LabelFileError(f"video {entry.video_id}: align 'fine' needs 5 landmarks on every face frame, and "
                                 f"face sidecar {entry.faces} lacks some")
    else:
        if detector is None:
            detector = create_detector(reg.detector, **({"face_detector": reg.face_detector}
                                                        if reg.detector == "face_alignment" else {}))
        track = SparseFaceTrack(detector, t_out, detect_width=reg.detect_width, detect_every=reg.detect_every,
                                min_score=reg.min_score)
        boxes, scores, lms = track.boxes, track.scores, track.landmarks
    # Smoothing is for detector jitter; a precomputed sidecar's boxes are taken as given.
    r = max(0, int(reg.smooth)) if reg.detector != "precomputed" else 0
    pending: dict[int, np.ndarray] = {}  # position -> decoded frame, until it is cropped
    writer = _Writer(_Cropper(reg), frames)

    def flush(upto: int) -> None:
        items = []
        for t in [t for t in pending if t <= upto]:
            frame = pending.pop(t)
            if not (scores[t] >= reg.min_score and np.isfinite(boxes[t]).all()):
                continue
            lo, hi = max(0, t - r), min(t_out, t + r + 1)
            window = np.where((scores[lo:hi] >= reg.min_score)[:, None], boxes[lo:hi], np.nan)
            box = smooth_boxes(window, radius=r)[t - lo] if r else boxes[t].copy()
            items.append((t, frame, box, lms[t].copy()))
        writer.submit(items)

    chunks = _Prefetch(iter_frames(reader, n, chunk=CHUNK_FRAMES, indices=keep, path=entry.path))
    keyed = None
    if track is not None and getattr(track.detector, "thread_safe", False):
        keyed = _Prefetch(((start, chunk, track.detect_keys(start, chunk)) for start, chunk in chunks), depth=1,
                          name="emotune-detect")
    ok = False
    try:
        for start, chunk, key_frames in keyed or ((start, chunk, None) for start, chunk in chunks):
            pending.update((start + k, frame) for k, frame in enumerate(chunk))
            if track is None:
                final = start + len(chunk) - 1
            elif key_frames is not None:  # detected on the detection thread
                final = track.resolve(start, chunk, key_frames, pending.__getitem__)
            else:
                final = track.feed(start, chunk, pending.__getitem__)
            flush(final - r)
        flush(t_out)
        ok = True
    finally:
        chunks.close()  # first: a detection thread waiting for a chunk then ends
        if keyed is not None:
            keyed.close()
        writer.close(wait=ok)
    valid = (scores >= reg.min_score) & np.isfinite(boxes).all(axis=1)
    if reg.align == "fine":
        valid &= np.isfinite(lms).all(axis=(1, 2))
    return valid, scores
