"""``emotune data prepare``: turn a manifest of face videos into cache entries, once per registration setting.

Each video is decoded once here and never again by trials. Videos that fail are skipped with their reason and the rest
go on; finished entries are found by content address, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from trainables.data.cache import Registration, build_entry, open_entry, remove_stale_temporaries
from trainables.data.manifest import VideoEntry, read_manifest


@dataclass
class PrepareSummary:
    ok: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    face_fraction: float = 0.0
    mean_score: float = 0.0

    def lines(self) -> list[str]:
        out = [f"videos ok: {len(self.ok)}, skipped: {len(self.skipped)}",
               f"frames with a face: {100 * self.face_fraction:.1f}%, mean detection score: {self.mean_score:.3f}"]
        out += [f"  skipped {vid}: {why}" for vid, why in self.skipped.items()]
        return out


_DETECTORS: dict[tuple, object] = {}  # one detector per process, reused across its videos (model loading is slow)


def _detector_for(reg: Registration):
    if reg.detector == "precomputed":
        return None
    key = (reg.detector, reg.face_detector)
    if key not in _DETECTORS:
        from trainables.data.faces import create_detector

        kwargs = {"face_detector": reg.face_detector} if reg.detector == "face_alignment" else {}
        _DETECTORS[key] = create_detector(reg.detector, **kwargs)
    return _DETECTORS[key]


def _build(args: tuple[VideoEntry, str, Registration]) -> tuple[str, str | None, str | None]:
    entry, cache_root, reg = args
    try:
        folder = build_entry(entry, cache_root, reg, detector=_detector_for(reg))
        return entry.video_id, folder.name, None
    except Exception as exc:  # one bad video must not cost the others
        return entry.video_id, None, f"{type(exc).__name__}: {exc}"


def prepare(manifest: str | Path, cache_root: str | Path, reg: Registration | None = None, *, workers: int = 1,
            progress: bool = True, index_path: str | Path | None = None) -> tuple[Path, PrepareSummary]:
    """Build cache entries for every video in ``manifest`` and write the dataset index trials read.

    Returns:
        (index path, summary). The index (JSON) lists every prepared video with its split, subject and entry folder.
    Raises:
        ManifestError: the manifest itself is unusable.
        RuntimeError: no video could be prepared (the message lists each reason).
    """
    reg = reg or Registration()
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_root)
    entries = read_manifest(manifest)
    jobs = [(e, str(cache_root), reg) for e in entries]
    summary = PrepareSummary()
    folders: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_build, jobs)
            for vid, folder, err in results:
                _record(summary, folders, vid, folder, err)
                bar.update()
    else:
        for job in jobs:
            _record(summary, folders, *_build(job))
            bar.update()
    bar.close()

    valid_total = frames_total = 0
    score_sum = 0.0
    for vid, folder in list(folders.items()):
        cv = open_entry(cache_root / folder)
        if not cv.valid.any():
            # Kept in the cache (a later run with another detector setting builds a new entry anyway), but a
            # video without a single face frame cannot train or be scored: skipped, with the reason.
            summary.ok.remove(vid)
            summary.skipped[vid] = "no face found on any frame"
            del folders[vid]
            continue
        valid_total += int(cv.valid.sum())
        frames_total += cv.num_frames
        score_sum += float(cv.scores[cv.valid].sum())
    if not folders:
        raise RuntimeError("no video could be prepared:\n" + "\n".join(f"  {v}: {w}" for v, w in summary.skipped.items()))
    summary.face_fraction = valid_total / max(frames_total, 1)
    summary.mean_score = score_sum / max(valid_total, 1)

    index = {
        "manifest": str(Path(manifest).resolve()),
        "cache_root": str(cache_root.resolve()),
        "registration": asdict(reg),
        "videos": [{"video_id": e.video_id, "subject": e.subject, "split": e.split, "entry": folders[e.video_id]}
                   for e in entries if e.video_id in folders],
        "skipped": summary.skipped,
    }
    index_path = Path(index_path) if index_path else cache_root / f"index-{reg.digest()}.json"
    tmp = index_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return index_path, summary


def _record(summary: PrepareSummary, folders: dict[str, str], vid: str, folder: str | None, err: str | None) -> None:
    if err is None:
        summary.ok.append(vid)
        folders[vid] = folder
    else:
        summary.skipped[vid] = err


def load_split(index_path: str | Path, split: str) -> list:
    """Open (memory-mapped) every prepared video of ``split`` listed in a dataset index."""
    index = json.loads(Path(index_path).read_text())
    root = Path(index["cache_root"])
    if not root.is_dir():  # an index moved with its cache (e.g. onto shared storage) still resolves
        root = Path(index_path).parent
    videos = [open_entry(root / v["entry"], v["video_id"]) for v in index["videos"] if v["split"] == split]
    if not videos:
        raise ValueError(f"dataset index {index_path} has no prepared video in split {split!r}")
    return videos

