"""The clip cache as trials read it: the format of an entry, opening one (memory-mapped), and the dataset index.

An entry is a folder holding:

* ``frames.npy`` (T, H, W, C) uint8 face crops at the entry's frame rate (black where no face was found),
* ``valid.npy`` (T,) bool and ``scores.npy`` (T,) float32: whether a face was found (score >= threshold), its score,
* ``frame_times.npy`` (T,) seconds of each kept frame in the source video,
* ``labels.npy`` (L, D) float32 on the video's canonical label timeline, rescaled to [-1, 1] (NaN = not annotated;
  see :mod:`trainables.data.labels`), ``label_times.npy`` (L,) seconds and ``label_frames.npy`` (L,) the kept frame
  nearest each label step (``trainables.data.labels.label_frame_index``),
* ``meta.json``: video id, fps, registration, label format, native label scale, dimension names.

A dataset index (JSON) lists the prepared videos of one dataset and registration setting with their split, subject
and entry folder; :func:`load_split` opens the videos of one split. Entries and indexes are written once per dataset by
``emotune data prepare`` (:mod:`trainables.prepare.build`, :mod:`trainables.prepare.run`); nothing here writes.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.errors import DataError

__all__ = ["CACHE_VERSION", "CachedVideo", "cache_root", "kept_frame_indices", "load_split", "open_entry",
           "read_index"]

CACHE_VERSION = 2


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
    subject: str = ""  # as the dataset index lists it (subject folds: trainables.prepare.folds)

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
    """Open the cache entry in ``folder`` for reading (``frames`` memory-mapped); ``video_id`` overrides the one in
    ``meta.json`` (the id the dataset index gives it)."""
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


def kept_frame_indices(num_frames: int, native_fps: float, target_fps: float | None) -> np.ndarray:
    """Source frame indices kept at ``target_fps``: frame k of the output is the source frame nearest k / target_fps,
    by the project's one time -> frame rule (:func:`trainables.data.labels.label_frame_index`: a time half-way between
    two frames goes to the later one, whatever their parity).

    Raises:
        DataError: target_fps above the video's own rate (frames would have to be invented).
    """
    if target_fps is None or abs(target_fps - native_fps) < 1e-6:
        return np.arange(num_frames, dtype=np.int64)
    if target_fps > native_fps + 1e-6:
        raise DataError(f"target fps {target_fps} exceeds the video's {native_fps:.3f} fps")
    count = int(np.floor((num_frames - 1) * target_fps / native_fps + 1e-9)) + 1
    from trainables.data.labels import label_frame_index

    return label_frame_index(np.arange(count) / target_fps, native_fps, num_frames)


#: The splits this process has opened, most recent last: (index file, its inode, modification time and size, split)
#: -> videos.
_OPENED: OrderedDict[tuple, tuple[CachedVideo, ...]] = OrderedDict()
_OPENED_KEPT = 8


def load_split(index_path: str | Path, split: str, missing_ok: bool = False,
               labelled: bool | None = True) -> list[CachedVideo]:
    """Open (memory-mapped) every prepared video of ``split`` listed in a dataset index.

    ``labelled``: True (fine-tuning, scoring) opens only the videos with labels, False only the unlabelled ones (a
    manifest row with an empty ``labels`` cell: pretraining only), None both.

    A process opens a split once: a trial process trains one trial after another on the same data, and reopening
    its entries (a hundred small files for 14 videos) was part of every trial's start. A later call for the same
    index file, unchanged, returns the same videos (nothing writes to them) in a new list; a rewritten index (a new
    ``emotune data prepare``) is opened again.

    Raises:
        DataError: the index cannot be read, or lists no prepared video in ``split`` (unless ``missing_ok``).
    """
    try:
        stat = Path(index_path).stat()
        key = (str(Path(index_path).resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size, split, labelled)
    except OSError:
        key = None  # reported below, where the index is read
    if key in _OPENED:
        _OPENED.move_to_end(key)
        videos = list(_OPENED[key])
    else:
        videos = _open_split(index_path, split, labelled)
        if key is not None:
            _OPENED[key] = tuple(videos)
            while len(_OPENED) > _OPENED_KEPT:
                _OPENED.popitem(last=False)
    if not videos and not missing_ok:
        kind = {True: " with labels", False: " without labels", None: ""}[labelled]
        raise DataError(f"dataset index {index_path} has no prepared video in split {split!r}{kind}")
    return videos


def read_index(index_path: str | Path, hint: str = "write it with `emotune data prepare`") -> dict:
    """A dataset index (``emotune data prepare`` writes it); one that cannot be read is a DataError naming the file,
    what went wrong and ``hint``."""
    try:
        return json.loads(Path(index_path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset index {index_path} cannot be read ({exc}); {hint}") from None


def cache_root(index: dict, index_path: str | Path) -> Path:
    """Where the video entries of ``index`` (read from ``index_path``) are: the cache folder it records, else the
    index's own folder (an index moved with its cache, e.g. onto shared storage, still resolves)."""
    root = Path(index["cache_root"])
    return root if root.is_dir() else Path(index_path).parent


def unlabelled_videos(index_path: str | Path) -> list[tuple[str, str]]:
    """(id, split) of the unlabelled (pretraining-only) videos a dataset index lists; [] when it cannot be read."""
    try:
        index = read_index(index_path)
    except DataError:
        return []
    return [(v["video_id"], v["split"]) for v in index.get("videos", []) if not is_labelled(v)]


def is_labelled(entry: dict) -> bool:
    """Whether a dataset index's video entry has labels (unlabelled ones are marked ``"labelled": false``)."""
    return entry.get("labelled", True) is not False


def _open_split(index_path: str | Path, split: str, labelled: bool | None = True) -> list[CachedVideo]:
    index = read_index(index_path)
    root = cache_root(index, index_path)
    listed = [v for v in index["videos"]
              if v["split"] == split and (labelled is None or is_labelled(v) == labelled)]
    videos = [open_entry(root / v["entry"], v["video_id"]) for v in listed]
    subjects = [v.get("subject", "") for v in listed]
    for video, subject in zip(videos, subjects):
        video.subject = subject
    return videos
