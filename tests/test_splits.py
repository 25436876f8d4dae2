"""Tests for subject-grouped splits, folds and manifest building (trainables/prepare/splits.py)."""
from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.prepare.adapters import read_labels
from trainables.prepare.manifest import read_manifest
from trainables.prepare.splits import (
    UnpairedFilesWarning,
    assign_splits,
    build_manifest,
    check_disjoint,
    kfold,
    pair_files,
    write_manifest,
)

SUBJECT_IDS = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6),
                       min_size=3, max_size=40)


def _subjects(n: int) -> list[str]:
    return [f"p{i:03d}" for i in range(n)]


def _counts(split: dict[str, str]) -> tuple[int, int, int]:
    c = Counter(split.values())
    return c["train"], c["val"], c["test"]


# ---------------------------------------------------------------------------
# assign_splits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, val, test, expected", [
    (3, 0.2, 0.2, (1, 1, 1)),
    (5, 0.2, 0.2, (3, 1, 1)),
    (10, 0.2, 0.2, (6, 2, 2)),
    (13, 0.2, 0.2, (7, 3, 3)),  # 2.6 -> 3
    (12, 0.125, 0.125, (8, 2, 2)),  # 1.5 rounds half up
    (4, 0.45, 0.45, (1, 1, 2)),  # 2 + 2 leaves no train: val gives one back
    (2, 0.3, 0.0, (1, 1, 0)),
    (2, 0.0, 0.3, (1, 0, 1)),
    (1, 0.0, 0.0, (1, 0, 0)),
    (20, 0.01, 0.01, (18, 1, 1)),  # a non-zero fraction always gets one subject
])
def test_assign_splits_sizes(n, val, test, expected):
    assert _counts(assign_splits(_subjects(n), val, test, seed=0)) == expected


def test_assign_splits_reproducible_order_independent_and_deduplicated():
    subjects = _subjects(20)
    a = assign_splits(subjects, seed=3)
    assert a == assign_splits(list(reversed(subjects)), seed=3)
    assert a == assign_splits(subjects * 3, seed=3)  # one id per video: duplicates count once
    assert list(a) == sorted(subjects)
    assert any(assign_splits(subjects, seed=s) != a for s in range(1, 6))


def test_assign_splits_stable_when_a_subject_is_added():
    # The hash-based order means adding a subject moves few others (a permutation would reshuffle everything).
    base = assign_splits(_subjects(40), 0.0, 0.0)
    assert set(base.values()) == {"train"}
    a, b = assign_splits(_subjects(40), seed=1), assign_splits(_subjects(41), seed=1)
    changed = sum(a[s] != b[s] for s in a)
    assert changed <= 4


@pytest.mark.parametrize("n, val, test, needed", [(2, 0.2, 0.2, 3), (0, 0.2, 0.2, 3), (1, 0.2, 0.0, 2),
                                                  (0, 0.0, 0.0, 1)])
def test_assign_splits_too_few_subjects(n, val, test, needed):
    with pytest.raises(ValueError) as exc:
        assign_splits(_subjects(n), val, test)
    assert f"{n} distinct subject(s) but at least {needed} are needed" in str(exc.value)


def test_assign_splits_argument_errors():
    with pytest.raises(ValueError, match="val_fraction must be a number in"):
        assign_splits(_subjects(5), val_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        assign_splits(_subjects(5), test_fraction=-0.1)
    with pytest.raises(ValueError, match="must be < 1"):
        assign_splits(_subjects(5), 0.5, 0.5)
    with pytest.raises(ValueError, match="non-empty strings"):
        assign_splits(["a", "", "b"])
    with pytest.raises(ValueError, match="non-empty strings"):
        assign_splits(["a", 3, "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not the string"):
        assign_splits("abc")
    with pytest.raises(TypeError, match="seed must be an int"):
        assign_splits(_subjects(5), seed=1.5)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(subjects=SUBJECT_IDS, seed=st.integers(0, 2**31), val=st.sampled_from([0.0, 0.1, 0.2, 0.3]),
       test=st.sampled_from([0.0, 0.1, 0.2, 0.3]))
def test_assign_splits_property_disjoint_and_complete(subjects, seed, val, test):
    unique = set(subjects)
    if len(unique) < 1 + (val > 0) + (test > 0):
        with pytest.raises(ValueError, match="are needed"):
            assign_splits(subjects, val, test, seed)
        return
    split = assign_splits(subjects, val, test, seed)
    assert set(split) == unique  # every subject exactly once (dict keys), so no subject in two splits
    n_train, n_val, n_test = _counts(split)
    assert n_train >= 1 and (n_val >= 1) == (val > 0) and (n_test >= 1) == (test > 0)
    assert split == assign_splits(sorted(subjects, reverse=True), val, test, seed)
    # Every video row derived from the assignment passes the disjointness check.
    check_disjoint((f"{s}_v{i}", s, split[s]) for i, s in enumerate(subjects))


# ---------------------------------------------------------------------------
# kfold
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, k", [(2, 2), (5, 2), (10, 3), (7, 7), (23, 5)])
def test_kfold_each_subject_val_once_sizes_balanced(n, k):
    subjects = _subjects(n)
    folds = kfold(subjects, k, seed=1)
    assert len(folds) == k
    assert all(set(f) == set(subjects) and set(f.values()) <= {"train", "val"} for f in folds)
    assert all(sum(f[s] == "val" for f in folds) == 1 for s in subjects)
    sizes = [sum(v == "val" for v in f.values()) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    assert folds == kfold(list(reversed(subjects)) * 2, k, seed=1)


def test_kfold_errors():
    with pytest.raises(ValueError, match="3-fold cross-validation needs at least 3 distinct subjects.*got 2"):
        kfold(["a", "b", "a"], 3)
    with pytest.raises(ValueError, match="k must be >= 2"):
        kfold(_subjects(5), 1)
    with pytest.raises(TypeError, match="k must be an int"):
        kfold(_subjects(5), 2.0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(subjects=SUBJECT_IDS, k=st.integers(2, 8), seed=st.integers(0, 1000))
def test_kfold_property(subjects, k, seed):
    unique = set(subjects)
    if len(unique) < k:
        with pytest.raises(ValueError, match="needs at least"):
            kfold(subjects, k, seed)
        return
    folds = kfold(subjects, k, seed)
    val_count = Counter(s for f in folds for s, v in f.items() if v == "val")
    assert set(val_count) == unique and set(val_count.values()) == {1}
    sizes = [sum(v == "val" for v in f.values()) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


# ---------------------------------------------------------------------------
# check_disjoint
# ---------------------------------------------------------------------------

def test_check_disjoint_names_subject_splits_and_videos():
    check_disjoint([("a_1", "a", "train"), ("a_2", "a", "train"), ("b_1", "b", "val"), ("c_1", "c", "test")])
    check_disjoint([])
    with pytest.raises(ValueError) as exc:
        check_disjoint([("a_1", "a", "train"), ("b_1", "b", "val"), ("a_2", "a", "test")])
    msg = str(exc.value)
    assert "subject 'a'" in msg and "'train' (video 'a_1')" in msg and "'test' (video 'a_2')" in msg


# ---------------------------------------------------------------------------
# write_manifest
# ---------------------------------------------------------------------------

def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_manifest_relative_paths_and_reader_roundtrip(tmp_path):
    v = _touch(tmp_path / "data" / "videos" / "a_1.mp4")
    lab = _touch(tmp_path / "data" / "labels" / "a_1.csv")
    out = tmp_path / "out" / "m.csv"
    rows = [{"video_id": "a_1", "path": v, "subject": "a", "split": "train", "labels": lab,
             "label_format": "frame_csv"}]
    assert write_manifest(rows, out) == out
    got = _read_csv(out)
    assert list(got[0]) == ["video_id", "path", "subject", "split", "labels", "label_format"]
    assert got[0]["path"] == "../data/videos/a_1.mp4" and got[0]["labels"] == "../data/labels/a_1.csv"
    (entry,) = read_manifest(out)
    assert entry.path.resolve() == v.resolve() and entry.faces is None
    assert not list(out.parent.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("change, match", [
    ({"split": "dev"}, "split 'dev' is not one of train, val, test"),
    ({"subject": ""}, "missing value.*subject"),
    ({"extra": "x"}, "unknown column.*extra"),
])
def test_write_manifest_rejects_bad_rows(tmp_path, change, match):
    row = {"video_id": "a_1", "path": "v.mp4", "subject": "a", "split": "train", "labels": "l.csv"}
    with pytest.raises(ValueError, match=match):
        write_manifest([{**row, **change}], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_write_manifest_duplicate_ids_subject_leak_and_empty(tmp_path):
    row = {"video_id": "a_1", "path": "v.mp4", "subject": "a", "split": "train", "labels": "l.csv"}
    with pytest.raises(ValueError, match="duplicate video_id, first in row 0"):
        write_manifest([row, row], tmp_path / "m.csv")
    with pytest.raises(ValueError, match="subject 'a' is in split 'train'"):
        write_manifest([row, {**row, "video_id": "a_2", "split": "val"}], tmp_path / "m.csv")
    with pytest.raises(ValueError, match="no rows"):
        write_manifest([], tmp_path / "m.csv")


# ---------------------------------------------------------------------------
# build_manifest / pair_files
# ---------------------------------------------------------------------------

def _dataset(root: Path, subjects: int = 5, videos: int = 2) -> tuple[Path, Path, Path]:
    vdir, ldir, fdir = root / "videos", root / "labels", root / "faces"
    for s in range(subjects):
        for v in range(videos):
            stem = f"sub{s}_take{v}"
            _touch(vdir / f"sub{s}" / f"{stem}.mp4")  # nested folders are searched too
            _touch(ldir / f"{stem}.csv", "frame,valence,arousal\n0,0.1,0.2\n1,0.3,-0.4\n")
            _touch(fdir / f"{stem}.csv")
    return vdir, ldir, fdir


def test_build_manifest_end_to_end(tmp_path):
    vdir, ldir, fdir = _dataset(tmp_path / "ds")
    out = tmp_path / "ds" / "manifest.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything pairs: no warning
        path = build_manifest(vdir, ldir, label_format="frame_csv", out=out, seed=0, val_fraction=0.2,
                              test_fraction=0.2, faces_dir=fdir)
    assert path == out
    rows = _read_csv(out)
    assert list(rows[0]) == ["video_id", "path", "subject", "split", "labels", "label_format", "faces"]
    assert len(rows) == 10 and [r["video_id"] for r in rows] == sorted(r["video_id"] for r in rows)
    assert rows[0]["path"] == "videos/sub0/sub0_take0.mp4" and rows[0]["labels"] == "labels/sub0_take0.csv"
    assert rows[0]["faces"] == "faces/sub0_take0.csv" and rows[0]["subject"] == "sub0"
    assert {r["label_format"] for r in rows} == {"frame_csv"}
    check_disjoint((r["video_id"], r["subject"], r["split"]) for r in rows)
    expected = assign_splits([f"sub{s}" for s in range(5)], 0.2, 0.2, seed=0)
    assert all(r["split"] == expected[r["subject"]] for r in rows)
    entries = read_manifest(out)
    assert len(entries) == 10
    track = read_labels(rows[0]["label_format"], entries[0].labels, fps=25)
    assert track.values.shape == (2, 2)


def test_build_manifest_reports_unpaired_files(tmp_path):
    vdir, ldir, fdir = _dataset(tmp_path / "ds", subjects=3, videos=1)
    _touch(vdir / "orphan_video.avi")
    _touch(ldir / "orphan_labels.csv")
    (fdir / "sub1_take0.csv").unlink()
    _touch(ldir / "notes.txt")  # not a frame_csv extension: ignored
    out = tmp_path / "m.csv"
    with pytest.warns(UnpairedFilesWarning) as rec:
        build_manifest(vdir, ldir, label_format="frame_csv", out=out, seed=0, faces_dir=fdir)
    msg = str(rec[0].message)
    assert "1 video(s) without labels" in msg and "orphan_video.avi" in msg
    assert "1 label file(s) without a video" in msg and "orphan_labels.csv" in msg
    assert "1 video(s) without a face sidecar" in msg and "sub1_take0.mp4" in msg
    rows = _read_csv(out)
    assert [r["video_id"] for r in rows] == ["sub0_take0", "sub1_take0", "sub2_take0"]
    assert rows[1]["faces"] == ""
    p = pair_files(vdir, ldir, label_format="frame_csv", faces_dir=fdir)
    assert [x.name for x in p.videos_without_labels] == ["orphan_video.avi"]
    assert [x.name for x in p.labels_without_videos] == ["orphan_labels.csv"]
    assert [x.name for x in p.videos_without_faces] == ["sub1_take0.mp4"]


def test_build_manifest_custom_subject_pattern_and_video_extensions(tmp_path):
    vdir, ldir = tmp_path / "v", tmp_path / "l"
    for i, ext in enumerate([".MP4", ".avi", ".mov", ".mkv"]):
        for sess in ("a", "b"):
            _touch(vdir / f"rec-{sess}-P{i}{ext}")
            _touch(ldir / f"rec-{sess}-P{i}.txt", "valence,arousal\n0.1,0.2\n")
    out = tmp_path / "m.csv"
    build_manifest(vdir, ldir, label_format="affwild2_va", subject_pattern=r"-(?P<subject>P\d+)$", out=out,
                   seed=1, val_fraction=0.25, test_fraction=0.25)
    rows = _read_csv(out)
    assert len(rows) == 8 and {r["subject"] for r in rows} == {"P0", "P1", "P2", "P3"}
    assert Counter(r["split"] for r in rows) == {"train": 4, "val": 2, "test": 2}
    check_disjoint((r["video_id"], r["subject"], r["split"]) for r in rows)


def test_build_manifest_recola_per_dimension_template(tmp_path):
    vdir, gs = tmp_path / "video", tmp_path / "gs"
    arff = ("@relation gs\n@attribute Instance_name string\n@attribute frameTime numeric\n"
            "@attribute GoldStandard numeric\n@data\n'{n}',0.00,0.1\n'{n}',0.04,0.2\n")
    for n in ("train_1", "train_2", "dev_1", "dev_2"):
        _touch(vdir / f"{n}.mp4")
        for dim in ("valence", "arousal"):
            _touch(gs / dim / f"{n}.arff", arff.format(n=n))
    (gs / "arousal" / "dev_2.arff").unlink()  # incomplete: reported, not paired
    out = tmp_path / "m.csv"
    with pytest.warns(UnpairedFilesWarning, match="without labels.*dev_2.mp4"):
        build_manifest(vdir, gs, label_format="recola_arff", subject_pattern=r"^(?P<subject>.+)$", out=out, seed=0,
                       val_fraction=0.34, test_fraction=0.0)
    rows = _read_csv(out)
    assert [r["labels"] for r in rows] == [f"gs/{{dim}}/{n}.arff" for n in ("dev_1", "train_1", "train_2")]
    track = read_labels("recola_arff", out.parent / rows[0]["labels"], fps=25)
    assert track.values.shape == (2, 2)
    p = pair_files(vdir, gs, label_format="recola_arff")
    assert p.labels_without_videos == [gs / "valence" / "dev_2.arff"]


def test_build_manifest_errors(tmp_path):
    vdir, ldir, _ = _dataset(tmp_path / "ds", subjects=3, videos=1)
    out = tmp_path / "m.csv"
    with pytest.raises(ValueError, match="named group"):
        build_manifest(vdir, ldir, label_format="frame_csv", subject_pattern=r"^([^_]+)", out=out)
    with pytest.raises(ValueError, match="not a valid regex"):
        build_manifest(vdir, ldir, label_format="frame_csv", subject_pattern=r"(?P<subject>", out=out)
    with pytest.raises(ValueError, match="finds no subject in video id 'sub0_take0'"):
        build_manifest(vdir, ldir, label_format="frame_csv", subject_pattern=r"^(?P<subject>x\d)", out=out)
    with pytest.raises(ValueError, match="unknown label format 'csv'; valid formats: afew_va"):
        build_manifest(vdir, ldir, label_format="csv", out=out)
    with pytest.raises(ValueError, match="no video in .* has a label file .afew_va. in"):
        build_manifest(vdir, ldir, label_format="afew_va", out=out)
    with pytest.raises(ValueError, match="does not exist"):
        build_manifest(tmp_path / "nope", ldir, label_format="frame_csv", out=out)
    _touch(vdir / "other" / "sub0_take0.mkv")
    with pytest.raises(ValueError, match="share the stem 'sub0_take0'"):
        build_manifest(vdir, ldir, label_format="frame_csv", out=out)
    assert not out.exists()


def test_build_manifest_too_few_subjects(tmp_path):
    vdir, ldir, _ = _dataset(tmp_path / "ds", subjects=2, videos=2)
    with pytest.raises(ValueError, match="2 distinct subject.*at least 3 are needed"):
        build_manifest(vdir, ldir, label_format="frame_csv", out=tmp_path / "m.csv")


def test_manifest_inside_labels_folder_is_not_a_label(tmp_path):
    vdir, ldir, _ = _dataset(tmp_path / "ds", subjects=3, videos=1)
    out = ldir / "manifest.csv"
    _touch(out, "stale")  # a previous run's manifest must not be taken for a label file without a video
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_manifest(vdir, ldir, label_format="frame_csv", out=out)
    assert len(_read_csv(out)) == 3
