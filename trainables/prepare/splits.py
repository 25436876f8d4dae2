"""Subject-grouped splits, K folds, and building a manifest from a folder of videos and label files.

SPEC "Evaluation protocol" 1: no subject (or session) may appear in two of train / val / test, and K-fold folds are
subject-grouped likewise. Everything here works on subject ids, never on videos, so that rule holds by construction;
``check_disjoint`` verifies it for any list of (video, subject, split) rows.

Which subject lands where is decided by a keyed hash of ``(seed, subject)`` rather than a random permutation: it is the
same on every platform and numpy version, does not depend on the order the subjects are given in, and a subject keeps its
place in the shuffled order when other subjects are added or removed.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from trainables.prepare.adapters import DEFAULT_DIMS, RECOLA_PLACEHOLDER, adapter_extensions, get_adapter
from trainables.prepare.manifest import REQUIRED_COLUMNS, SPLITS, ManifestError

__all__ = [
    "MANIFEST_COLUMNS",
    "Pairing",
    "UnpairedFilesWarning",
    "VIDEO_EXTENSIONS",
    "assign_splits",
    "build_manifest",
    "check_disjoint",
    "kfold",
    "pair_files",
    "write_manifest",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
MANIFEST_COLUMNS = (*REQUIRED_COLUMNS, "label_format", "faces", "fold")
FACE_EXTENSION = ".csv"
DEFAULT_SUBJECT_PATTERN = r"^(?P<subject>[^_]+)"


class UnpairedFilesWarning(UserWarning):
    """``build_manifest`` found videos without labels, labels without videos, or videos without a face sidecar."""


# ---------------------------------------------------------------------------
# Splits and folds
# ---------------------------------------------------------------------------

def _unique_subjects(subjects: Iterable[str], fn: str) -> list[str]:
    if isinstance(subjects, str):  # a bare string would be split into one-letter subjects
        raise TypeError(f"{fn}: subjects must be a sequence of subject ids, not the string {subjects!r}")
    out = set()
    for s in subjects:
        if not isinstance(s, str) or not s.strip():
            raise ManifestError(f"{fn}: subject ids must be non-empty strings; got {s!r}")
        out.add(s)
    return sorted(out)


def _check_seed(seed: int, fn: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{fn}: seed must be an int; got {seed!r}")
    return seed


def _shuffled(subjects: Sequence[str], seed: int) -> list[str]:
    """Subjects in a seed-dependent order that depends only on (seed, subject), never on input order or numpy."""
    def key(s: str) -> tuple[str, str]:
        return hashlib.sha256(f"{seed}\x00{s}".encode()).hexdigest(), s
    return sorted(subjects, key=key)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def assign_splits(subjects: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0) -> dict[str, str]:
    """Assign every distinct subject to ``"train"``, ``"val"`` or ``"test"``.

    Part sizes are ``round(n * fraction)`` (half up) for val and test, at least 1 for a non-zero fraction, and the rest
    train (at least 1); when rounding leaves no train subject, the larger of val / test gives one back. With n = 10 and
    the defaults: 6 / 2 / 2. Duplicated ids (e.g. one per video) count once.

    Args:
        subjects: subject ids (any order, duplicates allowed).
        val_fraction: share of subjects for validation, in [0, 1).
        test_fraction: share of subjects for test, in [0, 1); ``val_fraction + test_fraction < 1``.
        seed: selects the assignment; the same subjects and seed always give the same result.

    Returns:
        ``{subject: split}`` for every distinct subject, keys sorted.

    Raises:
        ManifestError: empty ids, fractions out of range, or fewer subjects than non-empty parts (the message says how
            many are needed).
        TypeError: a non-int seed or a bare string for ``subjects``.
    """
    fn = "assign_splits"
    _check_seed(seed, fn)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 <= f < 1):
            raise ManifestError(f"{fn}: {name} must be a number in [0, 1); got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise ManifestError(f"{fn}: val_fraction + test_fraction must be < 1 to leave train subjects; got "
                            f"{val_fraction} + {test_fraction}")
    unique = _unique_subjects(subjects, fn)
    n = len(unique)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if n < needed:
        parts = "train" + (", val" if val_fraction > 0 else "") + (", test" if test_fraction > 0 else "")
        raise ManifestError(f"{fn}: {n} distinct subject(s) but at least {needed} are needed (one each for {parts}); "
                            "add subjects or set a fraction to 0")
    n_val = max(1, _round_half_up(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, _round_half_up(n * test_fraction)) if test_fraction > 0 else 0
    while n - n_val - n_test < 1:
        # n >= needed guarantees the part we shrink stays >= 1.
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = _shuffled(unique, seed)
    split = {s: "test" for s in order[:n_test]}
    split.update({s: "val" for s in order[n_test:n_test + n_val]})
    split.update({s: "train" for s in order[n_test + n_val:]})
    return {s: split[s] for s in unique}


def kfold(subjects: Sequence[str], k: int, seed: int = 0) -> list[dict[str, str]]:
    """Subject-grouped K-fold cross-validation.

    Pass the subjects that take part in the sweep (normally the non-test ones): the test split must stay unseen.

    Args:
        subjects: subject ids (any order, duplicates count once).
        k: number of folds, 2 <= k <= number of distinct subjects.
        seed: selects the folds; same subjects and seed give the same folds.

    Returns:
        K mappings ``{subject: "train" | "val"}`` (each over all subjects, keys sorted); every subject is ``"val"`` in
        exactly one fold and the val parts differ in size by at most one.

    Raises:
        ManifestError: k < 2, fewer distinct subjects than k (the message says how many are needed), or empty ids.
        TypeError: a non-int k or seed.
    """
    fn = "kfold"
    _check_seed(seed, fn)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{fn}: k must be an int; got {k!r}")
    if k < 2:
        raise ManifestError(f"{fn}: k must be >= 2; got {k}")
    unique = _unique_subjects(subjects, fn)
    if len(unique) < k:
        raise ManifestError(f"{fn}: {k}-fold cross-validation needs at least {k} distinct subjects (one val subject "
                            f"per fold); got {len(unique)}")
    order = _shuffled(unique, seed)
    folds = []
    for i in range(k):
        val = set(order[i::k])  # round-robin: fold sizes differ by at most one
        folds.append({s: ("val" if s in val else "train") for s in unique})
    return folds


def check_disjoint(rows: Iterable[tuple[str, str, str]]) -> None:
    """Verify that no subject appears in two splits.

    Args:
        rows: ``(video_id, subject, split)`` triples, e.g. the rows of a manifest.

    Raises:
        ManifestError: naming the first subject found in two splits, both splits, and a video from each.
    """
    first: dict[str, tuple[str, str]] = {}
    for video_id, subject, split in rows:
        seen = first.setdefault(subject, (split, video_id))
        if seen[0] != split:
            raise ManifestError(f"subject {subject!r} is in split {seen[0]!r} (video {seen[1]!r}) and in split "
                                f"{split!r} (video {video_id!r}); splits must be subject-disjoint")


# ---------------------------------------------------------------------------
# Manifest writing
# ---------------------------------------------------------------------------

def _cell(value: object, root: str) -> str:
    """Manifest cell text: Paths become relative to the manifest folder (so the dataset can be moved), strings stay."""
    if value is None:
        return ""
    if isinstance(value, Path):
        # abspath rather than resolve: keep symlinked dataset folders as the user named them.
        return Path(os.path.relpath(os.path.abspath(value), root)).as_posix()
    return str(value)


def write_manifest(rows: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    """Write a manifest CSV (columns ``video_id,path,subject,split,labels[,label_format][,faces][,fold]``).

    ``Path`` values (video, labels, faces) are written relative to the manifest's folder; ``str`` values are written as
    given. The ``label_format`` / ``faces`` / ``fold`` columns are written when any row has a value for them (rows without one get
    an empty cell). The file is written to a temporary name and renamed, so a crash never leaves half a manifest.

    Args:
        rows: mappings with at least the required columns.
        path: output CSV; its folder is created.

    Returns:
        ``path``.

    Raises:
        ManifestError: no rows, a row lacking a required column, an empty or duplicated video_id, a split other than
            train / val / test, an unknown column, or a subject in two splits.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    if not rows:
        raise ManifestError(f"write_manifest {path}: no rows to write")
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "")]
        unknown = [c for c in row if c not in MANIFEST_COLUMNS]
        where = f"write_manifest {path} row {i} (video {row.get('video_id')!r})"
        if missing:
            raise ManifestError(f"{where}: missing value(s) for {', '.join(missing)}; required: "
                                f"{', '.join(REQUIRED_COLUMNS)}")
        if unknown:
            raise ManifestError(f"{where}: unknown column(s) {', '.join(unknown)}; "
                                f"allowed: {', '.join(MANIFEST_COLUMNS)}")
        if row["split"] not in SPLITS:
            raise ManifestError(f"{where}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        vid = str(row["video_id"])
        if vid in seen:
            raise ManifestError(f"{where}: duplicate video_id, first in row {seen[vid]}")
        seen[vid] = i
    check_disjoint((str(r["video_id"]), str(r["subject"]), str(r["split"])) for r in rows)
    columns = list(REQUIRED_COLUMNS) + [c for c in ("label_format", "faces", "fold") if any(r.get(c) for r in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    root = os.path.abspath(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            for r in rows:
                writer.writerow([_cell(r.get(c), root) for c in columns])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------
# Pairing videos with label files and building a manifest
# ---------------------------------------------------------------------------

@dataclass
class Pairing:
    """Result of ``pair_files``.

    Attributes:
        pairs: ``(video_id, video, labels, faces)`` sorted by video id; ``labels`` holds ``{dim}`` for per-dimension
            formats (RECOLA); ``faces`` is None when there is no sidecar.
        videos_without_labels: videos whose stem has no label file.
        labels_without_videos: label files whose stem has no video.
        videos_without_faces: paired videos without a face sidecar (only when a faces folder was given).
    """

    pairs: list[tuple[str, Path, Path, Path | None]] = field(default_factory=list)
    videos_without_labels: list[Path] = field(default_factory=list)
    labels_without_videos: list[Path] = field(default_factory=list)
    videos_without_faces: list[Path] = field(default_factory=list)


def _index(folder: Path, extensions: Sequence[str], what: str, exclude: Path | None = None) -> dict[str, Path]:
    """``{stem: file}`` for files under ``folder`` (recursively) with one of ``extensions`` (case-insensitive)."""
    if not folder.is_dir():
        raise ManifestError(f"{what} folder {folder} does not exist or is not a folder")
    exts = {e.lower() for e in extensions}
    out: dict[str, Path] = {}
    excluded = os.path.abspath(exclude) if exclude is not None else None
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in exts or p.name.startswith("."):
            continue
        if excluded is not None and os.path.abspath(p) == excluded:
            continue
        if p.stem in out:
            raise ManifestError(f"{what} files {out[p.stem]} and {p} share the stem {p.stem!r}; video ids (file stems) "
                                "must be unique")
        out[p.stem] = p
    return out


def _recola_index(labels_dir: Path, dims: Sequence[str], exclude: Path | None
                  ) -> tuple[dict[str, Path], list[Path]]:
    """RECOLA keeps one file per dimension in ``<labels_dir>/<dim>/<stem>.arff``: map a stem to the ``{dim}`` template.

    Falls back to ``<labels_dir>/<stem>.arff`` (one dimension) when there are no per-dimension folders. Files present for
    some dims but not all are returned as unpaired.
    """
    per_dim = [labels_dir / d for d in dims]
    if not any(p.is_dir() for p in per_dim):
        return _index(labels_dir, (".arff",), "label", exclude), []
    found = {d: (_index(labels_dir / d, (".arff",), "label", exclude) if (labels_dir / d).is_dir() else {})
             for d in dims}
    stems = set().union(*(set(f) for f in found.values()))
    complete: dict[str, Path] = {}
    partial: list[Path] = []
    for stem in sorted(stems):
        if all(stem in found[d] for d in dims):
            complete[stem] = labels_dir / RECOLA_PLACEHOLDER / f"{stem}.arff"
        else:
            partial.extend(found[d][stem] for d in dims if stem in found[d])
    return complete, partial


def pair_files(videos_dir: str | Path, labels_dir: str | Path, *, label_format: str,
               faces_dir: str | Path | None = None, dims: Sequence[str] = DEFAULT_DIMS,
               exclude: str | Path | None = None) -> Pairing:
    """Pair every video (``VIDEO_EXTENSIONS``, searched recursively) with the label file of the same stem.

    Label files are those with the adapter's extensions under ``labels_dir`` (recursively); for ``recola_arff`` with
    per-dimension folders ``<labels_dir>/<dim>/<stem>.arff`` a stem pairs only when every dim has its file. Face sidecars
    are ``<stem>.csv`` under ``faces_dir``.

    Args:
        videos_dir: folder with the videos.
        labels_dir: folder with the label files.
        label_format: adapter name (selects the label extensions).
        faces_dir: optional folder with face sidecars.
        dims: dimensions (used by per-dimension formats).
        exclude: a file never taken as a label (the manifest being written, if it lies under ``labels_dir``).

    Returns:
        The ``Pairing`` (nothing is dropped silently: unpaired files are listed).

    Raises:
        ManifestError: an unknown label format (lists the valid ones), a missing folder, or two files with the same
            stem.
    """
    try:
        get_adapter(label_format)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    exclude_p = Path(exclude) if exclude is not None else None
    videos = _index(Path(videos_dir), VIDEO_EXTENSIONS, "video")
    if label_format == "recola_arff":
        labels, partial = _recola_index(Path(labels_dir), dims, exclude_p)
    else:
        labels, partial = _index(Path(labels_dir), adapter_extensions(label_format), "label", exclude_p), []
    faces = _index(Path(faces_dir), (FACE_EXTENSION,), "face sidecar", exclude_p) if faces_dir is not None else {}
    out = Pairing()
    for stem, video in sorted(videos.items()):
        if stem not in labels:
            out.videos_without_labels.append(video)
            continue
        face = faces.get(stem)
        if faces_dir is not None and face is None:
            out.videos_without_faces.append(video)
        out.pairs.append((stem, video, labels[stem], face))
    out.labels_without_videos = sorted([p for s, p in labels.items() if s not in videos] + partial)
    return out


def _summary(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


def build_manifest(videos_dir: str | Path, labels_dir: str | Path, *, label_format: str,
                   subject_pattern: str = DEFAULT_SUBJECT_PATTERN, out: str | Path, seed: int = 0,
                   val_fraction: float = 0.2, test_fraction: float = 0.2, faces_dir: str | Path | None = None,
                   dims: Sequence[str] = DEFAULT_DIMS) -> Path:
    """Build a subject-split manifest from a folder of videos and a folder of label files.

    Every video is paired with the label file of the same stem (``pair_files``); the video id is the stem; the subject is
    the ``subject`` group of ``subject_pattern`` searched in the video id (default: everything before the first ``_``);
    subjects are split with ``assign_splits``. The manifest has columns ``video_id,path,subject,split,labels,
    label_format`` (+ ``faces`` when ``faces_dir`` is given), with paths relative to the manifest's folder.

    Unpaired files (videos without labels, labels without videos, videos without a face sidecar) are not silently
    dropped: they are reported in one ``UnpairedFilesWarning``; call ``pair_files`` for the full lists.

    Args:
        videos_dir: folder with the videos (searched recursively).
        labels_dir: folder with the label files.
        label_format: adapter name written into every row.
        subject_pattern: regex with a named group ``subject``.
        out: manifest path to write.
        seed: split seed.
        val_fraction: share of subjects for validation.
        test_fraction: share of subjects for test.
        faces_dir: optional folder with ``<stem>.csv`` face sidecars.
        dims: dimensions (only per-dimension formats such as ``recola_arff`` use them for pairing).

    Returns:
        The manifest path.

    Raises:
        ManifestError: an unknown format, a pattern without a ``subject`` group or that does not match a video id
            (named), no video with labels, too few subjects for the split fractions, or the errors of ``pair_files``.
    """
    out = Path(out)
    try:
        pattern = re.compile(subject_pattern)
    except re.error as exc:
        raise ManifestError(f"build_manifest: subject_pattern {subject_pattern!r} is not a valid regex: {exc}") \
            from None
    if "subject" not in pattern.groupindex:
        raise ManifestError(f"build_manifest: subject_pattern {subject_pattern!r} needs a named group (?P<subject>...)")
    pairing = pair_files(videos_dir, labels_dir, label_format=label_format, faces_dir=faces_dir, dims=dims,
                         exclude=out)
    notes = []
    if pairing.videos_without_labels:
        notes.append(f"{len(pairing.videos_without_labels)} video(s) without labels in {labels_dir}: "
                     f"{_summary(pairing.videos_without_labels)}")
    if pairing.labels_without_videos:
        notes.append(f"{len(pairing.labels_without_videos)} label file(s) without a video in {videos_dir}: "
                     f"{_summary(pairing.labels_without_videos)}")
    if pairing.videos_without_faces:
        notes.append(f"{len(pairing.videos_without_faces)} video(s) without a face sidecar in {faces_dir}: "
                     f"{_summary(pairing.videos_without_faces)}")
    if not pairing.pairs:
        raise ManifestError(f"build_manifest: no video in {videos_dir} has a label file ({label_format}) in "
                            f"{labels_dir}" + (f" ({'; '.join(notes)})" if notes else ""))
    subjects = {}
    for vid, _, _, _ in pairing.pairs:
        m = pattern.search(vid)
        if m is None or not m.group("subject"):
            raise ManifestError(f"build_manifest: subject_pattern {subject_pattern!r} finds no subject in video id "
                                f"{vid!r}; give a pattern whose (?P<subject>...) group matches every video file stem")
        subjects[vid] = m.group("subject")
    split_of = assign_splits(list(subjects.values()), val_fraction, test_fraction, seed)
    rows = []
    for vid, video, labels, face in pairing.pairs:
        row: dict[str, object] = {"video_id": vid, "path": video, "subject": subjects[vid],
                                  "split": split_of[subjects[vid]], "labels": labels, "label_format": label_format}
        if faces_dir is not None:
            row["faces"] = face
        rows.append(row)
    write_manifest(rows, out)
    if notes:
        warnings.warn(f"build_manifest {out}: " + "; ".join(notes), UnpairedFilesWarning, stacklevel=2)
    return out
