"""The generic manifest: one row per video with its id, path, subject, split and label source.

Paths in a manifest are relative to the manifest's folder unless absolute, so a dataset folder can be moved or mounted
elsewhere on a cluster without rewriting it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import DataError

REQUIRED_COLUMNS = ("video_id", "path", "subject", "split", "labels")
SPLITS = ("train", "val", "test")


class ManifestError(DataError):
    """A manifest that cannot be used (or built); the message names the file, the row or column, and what is
    allowed."""


@dataclass(frozen=True)
class VideoEntry:
    """One manifest row with its paths resolved."""

    video_id: str
    path: Path
    subject: str
    split: str
    labels: Path | None  # None: an empty ``labels`` cell, a pretraining-only video (``emotune pretrain``)
    faces: Path | None
    label_format: str = "frame_csv"
    fold: int | None = None  # the optional ``fold`` column: this video's cross-validation fold (1..K)


def read_manifest(path: str | Path) -> list[VideoEntry]:
    """Read and validate a manifest CSV.

    A row with an empty ``labels`` cell is an unlabelled video: ``data prepare`` caches it, ``emotune pretrain`` trains
    on it (train-split subjects only), fine-tuning sweeps leave it out.

    Raises:
        ManifestError: missing file or columns, an empty manifest, a duplicate video id, an unknown split, a path that
            does not exist, or a subject that appears in two splits (splits must be subject-disjoint).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    root = path.parent
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}"
                f" (optional: faces, label_format, fold); found: {', '.join(columns) or 'none'}"
            )
        rows = list(reader)
    if not rows:
        raise ManifestError(f"manifest {path} lists no videos")

    from trainables.prepare.adapters import list_adapters

    adapters = list_adapters()
    entries: list[VideoEntry] = []
    seen: dict[str, int] = {}
    subject_split: dict[str, tuple[str, str]] = {}
    subject_fold: dict[str, tuple[int, str]] = {}
    for line, row in enumerate(rows, start=2):
        vid = (row["video_id"] or "").strip()
        where = f"manifest {path} line {line} (video {vid!r})"
        if not vid:
            raise ManifestError(f"manifest {path} line {line}: empty video_id")
        if vid in seen:
            raise ManifestError(f"{where}: duplicate video_id, first seen on line {seen[vid]}")
        seen[vid] = line
        split = (row["split"] or "").strip()
        if split not in SPLITS:
            raise ManifestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        subject = (row["subject"] or "").strip()
        if not subject:
            raise ManifestError(f"{where}: empty subject")
        if subject in subject_split and subject_split[subject][0] != split:
            other_split, other_vid = subject_split[subject]
            raise ManifestError(
                f"{where}: subject {subject!r} is in split {split!r} and also in {other_split!r} (video {other_vid!r});"
                " splits must be subject-disjoint"
            )
        subject_split.setdefault(subject, (split, vid))
        video = _resolve(root, row["path"], where, "path")
        label_format = (row.get("label_format") or "").strip() or "frame_csv"
        if label_format not in adapters:
            raise ManifestError(f"{where}: label_format {label_format!r} is unknown; allowed: {', '.join(adapters)}")
        # An empty labels cell: unlabelled video, cached for self-supervised pretraining only (fine-tuning leaves it out).
        labels = _resolve(root, row["labels"], where, "labels") if (row["labels"] or "").strip() else None
        faces = _resolve(root, row["faces"], where, "faces") if (row.get("faces") or "").strip() else None
        fold = _fold(row.get("fold"), where)
        if fold is not None:
            if subject in subject_fold and subject_fold[subject][0] != fold:
                other_fold, other_vid = subject_fold[subject]
                raise ManifestError(f"{where}: subject {subject!r} is in fold {fold} and also in fold {other_fold} "
                                    f"(video {other_vid!r}); a subject's videos must share one fold")
            subject_fold.setdefault(subject, (fold, vid))
        entries.append(VideoEntry(vid, video, subject, split, labels, faces, label_format, fold))
    return entries


def _fold(value: str | None, where: str) -> int | None:
    """The optional ``fold`` cell: empty, or a whole number >= 1."""
    value = (value or "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ManifestError(f"{where}: fold {value!r} is not allowed; allowed: a whole number >= 1, or empty")
    return int(value)


def _resolve(root: Path, value: str | None, where: str, column: str) -> Path:
    value = (value or "").strip()
    if not value:
        raise ManifestError(f"{where}: empty {column}")
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if "{dim}" in value:  # one label file per dimension (RECOLA): the adapter checks each file
        if not p.parent.parent.exists():
            raise ManifestError(f"{where}: {column} {p} points into a folder that does not exist")
        return p
    if not p.exists():
        raise ManifestError(f"{where}: {column} {p} does not exist")
    return p
