"""``emotune data prepare``: turn a manifest of face videos into cache entries and a dataset index, once per
registration setting (the driver of this package: manifest -> labels and faces -> registration -> cache entry).

Each video is decoded once here and never again by trials, which read the index and the entries with
:mod:`trainables.data.cache`. Videos that fail are skipped with their reason and the rest go on; finished entries are
found by content address, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainables.data.cache import open_entry
from trainables import console
from trainables.errors import DataError, UserError
from trainables.prepare.build import build_entry, remove_stale_temporaries
from trainables.prepare.manifest import VideoEntry, read_manifest
from trainables.prepare.registration import Registration


#: Videos with a face on fewer than this share of their frames are named in a warning (``--warn-face-share``).
WARN_FACE_SHARE = 0.5
#: Videos with a face on fewer than this share of their frames are skipped (``--min-face-share``; 0 skips none).
MIN_FACE_SHARE = 0.0
#: Up to this many videos in the index, the summary lists every video's face share; beyond, min / median / max.
LIST_VIDEOS_UP_TO = 12


@dataclass
class PrepareSummary:
    """What a prepare run did, for the user.

    Attributes:
        ok: ids of the videos in the dataset index, in manifest order.
        skipped: video id -> the reason it is not in the index (decoding or label error, no face at all, face share
            below ``min_face_share``).
        face_fraction: frames with a face over all frames of the videos in the index.
        mean_score: mean detection score over those face frames.
        face_share: video id -> share of its frames with a face, for every video whose frames were read (those in
            the index and those skipped for their faces).
        warn_face_share: videos in the index below this share are named in a warning line.
        min_face_share: the share below which videos were skipped.
    """

    ok: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    face_fraction: float = 0.0
    mean_score: float = 0.0
    face_share: dict[str, float] = field(default_factory=dict)
    warn_face_share: float = WARN_FACE_SHARE
    min_face_share: float = MIN_FACE_SHARE
    unlabelled: list[str] = field(default_factory=list)  # ids in the index without labels (pretraining only)

    @property
    def few_faces(self) -> list[str]:
        """Videos in the index with a face on fewer than ``warn_face_share`` of their frames, fewest first."""
        low = [v for v in self.ok if self.face_share.get(v, 1.0) < self.warn_face_share]
        return sorted(low, key=lambda v: (self.face_share[v], v))

    def lines(self) -> list[str]:
        unlabelled = f" ({len(self.unlabelled)} unlabelled: pretraining only)" if self.unlabelled else ""
        out = [f"videos ok: {len(self.ok)}{unlabelled}, skipped: {len(self.skipped)}",
               f"frames with a face: {100 * self.face_fraction:.1f}%, mean detection score: {self.mean_score:.3f}"]
        shares = {v: self.face_share[v] for v in self.ok if v in self.face_share}
        if shares:
            lowest = min(shares, key=lambda v: (shares[v], v))
            highest = max(shares, key=lambda v: (shares[v], v))
            out.append(f"face share per video: min {_pct(shares[lowest])} ({lowest}), "
                       f"median {_pct(float(np.median(list(shares.values()))))}, "
                       f"max {_pct(shares[highest])} ({highest})")
            if len(shares) <= LIST_VIDEOS_UP_TO:
                out += [f"  {v}: face on {_pct(share)} of frames" for v, share in shares.items()]
        few = self.few_faces
        if few:
            named = ", ".join(f"{v} ({_pct(self.face_share[v])})" for v in few)
            out.append(f"warning: {len(few)} video(s) in the index have a face on fewer than "
                       f"{_pct(self.warn_face_share)} of their frames: {named}; check the face detection, or leave "
                       f"them out with --min-face-share")
        out += [f"  skipped {vid}: {why}" for vid, why in self.skipped.items()]
        return out


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


_DETECTORS: dict[tuple, object] = {}  # one detector per process, reused across its videos (model loading is slow)


def _detector_for(reg: Registration):
    if reg.detector == "precomputed":
        return None
    key = (reg.detector, reg.face_detector)
    if key not in _DETECTORS:
        from trainables.prepare.faces import create_detector

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
            progress: bool = True, index_path: str | Path | None = None, min_face_share: float = MIN_FACE_SHARE,
            warn_face_share: float = WARN_FACE_SHARE) -> tuple[Path, PrepareSummary]:
    """Build cache entries for every video in ``manifest`` and write the dataset index trials read.

    A video is left out of the index, with its reason in ``summary.skipped``, when it cannot be decoded or its label
    or face file is unusable, when no frame has a face, or when the share of its frames with a face is below
    ``min_face_share``; the other videos go on. Its cache entry, if built, stays (another setting may use it).

    Args:
        min_face_share: skip videos with a face on fewer than this share of their frames (0 skips none).
        warn_face_share: name the videos in the index with a face on fewer than this share of their frames in a
            warning line of ``summary.lines()``.

    Returns:
        (index path, summary). The index (JSON) lists every prepared video with its split, subject and entry folder,
        the skipped videos with their reasons, and every read video's face share (``face_share``).
    Raises:
        ManifestError: the manifest itself is unusable.
        UserError: a face share threshold outside [0, 1].
        DataError: no video could be prepared (the message lists each reason).
    """
    for name, value in (("min_face_share", min_face_share), ("warn_face_share", warn_face_share)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be a share of frames in [0, 1], got {value}")
    reg = reg or Registration()
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_root)
    entries = read_manifest(manifest)
    jobs = [(e, str(cache_root), reg) for e in entries]
    summary = PrepareSummary(warn_face_share=warn_face_share, min_face_share=min_face_share)
    folders: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not (progress and console.bars()),
               file=console.bar_stream())
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
        share = float(cv.valid.mean()) if cv.num_frames else 0.0
        summary.face_share[vid] = share
        # A skipped video's entry stays in the cache (a later run with another setting builds its own anyway), but it
        # is left out of the index: a video without a face frame cannot train or be scored, and one below the
        # user's minimum share is mostly no-face frames (a street scene, a wrong detector setting).
        if not cv.valid.any():
            reason = "no face found on any frame"
        elif share < min_face_share:
            reason = f"face on {_pct(share)} of frames, below --min-face-share {min_face_share:g}"
        else:
            reason = None
        if reason is not None:
            summary.ok.remove(vid)
            summary.skipped[vid] = reason
            del folders[vid]
            continue
        valid_total += int(cv.valid.sum())
        frames_total += cv.num_frames
        score_sum += float(cv.scores[cv.valid].sum())
    if not folders:
        # One line per distinct reason: a missing weight file or a wrong setting fails every video alike.
        by_reason: dict[str, list[str]] = {}
        for vid, why in summary.skipped.items():
            by_reason.setdefault(why, []).append(vid)
        raise DataError("no video could be prepared:\n" + "\n".join(
            f"  {', '.join(vids) if len(vids) <= 3 else f'{len(vids)} videos ({vids[0]}, ...)'}: {why}"
            for why, vids in by_reason.items()))
    summary.face_fraction = valid_total / max(frames_total, 1)
    summary.mean_score = score_sum / max(valid_total, 1)

    summary.unlabelled = [e.video_id for e in entries if e.video_id in folders and e.labels is None]
    index = {
        "manifest": str(Path(manifest).resolve()),
        "cache_root": str(cache_root.resolve()),
        "registration": asdict(reg),
        "videos": [{"video_id": e.video_id, "subject": e.subject, "split": e.split, "entry": folders[e.video_id],
                    **({"fold": e.fold} if e.fold is not None else {}),
                    **({"labelled": False} if e.labels is None else {})}
                   for e in entries if e.video_id in folders],
        "skipped": summary.skipped,
        "face_share": summary.face_share,
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
