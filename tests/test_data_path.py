"""Tests for the data path: manifest -> label / face files -> decoding -> cache entries -> dataset index.

Uses the session fixtures ``synth_manifest`` / ``prepared_index`` / ``prepare_summary`` (tests/conftest.py): real mp4
files written by ``synthesize()``, decoded by decord. Everything that edits files works on copies in ``tmp_path``.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import struct
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainables.data.cache import load_split
from trainables.errors import DataError
from trainables.prepare import build as build_mod
from trainables.prepare.build import build_entry
from trainables.prepare.decode import VideoDecodeError, iter_frames, open_video
from trainables.prepare.manifest import ManifestError, read_manifest
from trainables.prepare.registration import Registration
from trainables.prepare.run import prepare
from trainables.prepare.sidecar import FACE_COLUMNS, LabelFileError, read_face_sidecar, read_frame_labels

decord = pytest.importorskip("decord")

REG = Registration(size=32)
T = 80  # frames per synthetic video (conftest SYNTH_PARAMS)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

ENTRY_FILES = ["frame_times.npy", "frames.npy", "label_frames.npy", "label_times.npy", "labels.npy", "meta.json",
               "scores.npy", "valid.npy"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def _manifest_rows(synth_manifest: Path) -> list[dict[str, str]]:
    """The synthetic manifest's rows with absolute paths, so copies can live anywhere."""
    root = synth_manifest.parent
    rows = _rows(synth_manifest)
    for r in rows:
        for col in ("path", "labels", "faces"):
            r[col] = str(root / r[col])
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]], columns=("video_id", "path", "subject", "split",
                                                                     "labels", "faces")) -> Path:
    return _write(path, list(columns), [[r[c] for c in columns] for r in rows])


def _scores(faces_csv: Path) -> np.ndarray:
    return np.array([float(r["score"]) for r in _rows(faces_csv)])


def _labels(labels_csv: Path) -> np.ndarray:
    return np.array([[float(r["valence"]), float(r["arousal"])] for r in _rows(labels_csv)], dtype=np.float32)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _index_entries(index_path: Path) -> dict[str, Path]:
    index = json.loads(index_path.read_text())
    return {v["video_id"]: Path(index["cache_root"]) / v["entry"] for v in index["videos"]}


# ---------------------------------------------------------------------------
# 1. manifest
# ---------------------------------------------------------------------------

def test_manifest_reads_synthetic_dataset(synth_manifest):
    entries = read_manifest(synth_manifest)
    rows = _rows(synth_manifest)
    assert [e.video_id for e in entries] == [r["video_id"] for r in rows] == ["s00_v0", "s01_v0", "s02_v0"]
    for e, r in zip(entries, rows):
        assert e.path == synth_manifest.parent / r["path"] and e.path.is_file()
        assert e.labels == synth_manifest.parent / r["labels"]
        assert e.faces == synth_manifest.parent / r["faces"]
        assert (e.subject, e.split) == (r["subject"], r["split"])
    assert sorted(e.split for e in entries) == ["test", "train", "val"]


def test_manifest_missing_columns_are_listed(synth_manifest, tmp_path):
    m = _write_manifest(tmp_path / "m.csv", _manifest_rows(synth_manifest), columns=("video_id", "path", "split"))
    with pytest.raises(ManifestError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert str(m) in msg
    assert "lacks column(s) subject, labels" in msg
    assert "found: video_id, path, split" in msg


def test_manifest_duplicate_video_id_named(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)
    rows[2] = dict(rows[2], video_id=rows[0]["video_id"], subject=rows[0]["subject"], split=rows[0]["split"])
    m = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert str(m) in msg and "'s00_v0'" in msg and "duplicate video_id" in msg
    assert "line 4" in msg and "first seen on line 2" in msg


def test_manifest_subject_in_two_splits_named(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)
    other_split = next(r["split"] for r in rows if r["subject"] != "s00")
    rows.append(dict(rows[0], video_id="s00_v9", split=other_split))
    m = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert str(m) in msg and "subject 's00'" in msg and "subject-disjoint" in msg
    assert repr(other_split) in msg and repr(rows[0]["split"]) in msg


def test_manifest_nonexistent_path_named(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)
    rows[1]["path"] = "videos/nope.mp4"  # relative: resolved against the manifest's folder
    m = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert str(m) in msg and str(tmp_path / "videos" / "nope.mp4") in msg and "does not exist" in msg
    assert repr(rows[1]["video_id"]) in msg


def test_manifest_unknown_split_named(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)
    rows[0]["split"] = "dev"
    m = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as exc:
        read_manifest(m)
    msg = str(exc.value)
    assert str(m) in msg and "split 'dev' is not one of train, val, test" in msg


def test_manifest_empty(synth_manifest, tmp_path):
    m = _write_manifest(tmp_path / "m.csv", [])
    with pytest.raises(ManifestError, match="lists no videos") as exc:
        read_manifest(m)
    assert str(m) in str(exc.value)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(ManifestError, match="found: none") as exc:
        read_manifest(blank)
    assert str(blank) in str(exc.value)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------
# 2. label and face sidecar files
# ---------------------------------------------------------------------------

def test_labels_read_synthetic_file_exactly(synth_manifest):
    path = synth_manifest.parent / "labels" / "s00_v0.csv"
    values = read_frame_labels(path)
    assert values.dtype == np.float32 and values.shape == (T, 2)
    np.testing.assert_array_equal(values, _labels(path))


@pytest.mark.parametrize("header", [["frame", "arousal", "valence"], ["t", "valence", "arousal"], ["frame", "valence"]])
def test_labels_wrong_header(tmp_path, header):
    p = _write(tmp_path / "l.csv", header, [[0] + [0.1] * (len(header) - 1), [1] + [0.2] * (len(header) - 1)])
    with pytest.raises(LabelFileError) as exc:
        read_frame_labels(p)
    msg = str(exc.value)
    assert str(p) in msg and f"header {header}" in msg and "expected ['frame', 'valence', 'arousal']" in msg


@pytest.mark.parametrize("frames", [[0, 2, 1, 3], [0, 1, 3, 4], [1, 2, 3, 4]], ids=["out_of_order", "gap", "offset"])
def test_labels_frames_must_count_in_order(tmp_path, frames):
    p = _write(tmp_path / "l.csv", ["frame", "valence", "arousal"], [[f, 0.1, 0.2] for f in frames])
    with pytest.raises(LabelFileError) as exc:
        read_frame_labels(p)
    assert str(p) in str(exc.value) and "must count 0..3 in order" in str(exc.value)


def test_labels_all_nan_rejected(tmp_path):
    p = _write(tmp_path / "l.csv", ["frame", "valence", "arousal"], [[0, "", ""], [1, "nan", ""], [2, "", "NaN"]])
    with pytest.raises(LabelFileError) as exc:
        read_frame_labels(p)
    assert str(p) in str(exc.value) and "no annotated value" in str(exc.value)


def test_labels_nan_cells_kept(tmp_path):
    p = _write(tmp_path / "l.csv", ["frame", "valence", "arousal"],
               [[0, 0.25, -0.5], [1, "", 0.125], [2, -1.0, ""], [3, "", ""]])
    values = read_frame_labels(p)
    expected = np.array([[0.25, -0.5], [np.nan, 0.125], [-1.0, np.nan], [np.nan, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(values, expected)  # NaNs in the same places, other values exact


def test_labels_non_numeric_and_infinite_rejected(tmp_path):
    p = _write(tmp_path / "l.csv", ["frame", "valence", "arousal"], [[0, 0.5, 0.1], [1, "0.5x", 0.2]])
    with pytest.raises(LabelFileError) as exc:
        read_frame_labels(p)
    assert str(p) in str(exc.value) and "'0.5x'" in str(exc.value) and "frame 1" in str(exc.value)
    p = _write(tmp_path / "inf.csv", ["frame", "valence", "arousal"], [[0, 0.5, "inf"]])
    with pytest.raises(LabelFileError, match="infinite"):
        read_frame_labels(p)


def test_labels_empty_or_unreadable(tmp_path):
    p = _write(tmp_path / "l.csv", ["frame", "valence", "arousal"], [])
    with pytest.raises(LabelFileError, match="has no rows"):
        read_frame_labels(p)
    z = tmp_path / "zero.csv"
    z.write_text("")
    with pytest.raises(LabelFileError, match="cannot be read") as exc:
        read_frame_labels(z)
    assert str(z) in str(exc.value)


def test_sidecar_reads_synthetic_file(synth_manifest):
    path = synth_manifest.parent / "faces" / "s00_v0.csv"
    rows = _rows(path)
    track = read_face_sidecar(path)
    assert track.boxes.shape == (T, 4) and track.scores.shape == (T,) and track.landmarks.shape == (T, 5, 2)
    no_face = np.array([r["x1"] == "" for r in rows])
    assert 0 < no_face.sum() < T  # the dataset does have missing-face frames
    assert np.isnan(track.boxes[no_face]).all() and (track.scores[no_face] == 0).all()
    np.testing.assert_array_equal(track.scores, np.array([float(r["score"]) for r in rows], dtype=np.float32))
    t = int(np.flatnonzero(~no_face)[0])
    np.testing.assert_array_equal(track.boxes[t], np.array([rows[t][c] for c in ("x1", "y1", "x2", "y2")], np.float32))
    np.testing.assert_array_equal(track.landmarks[t], np.array([rows[t][c] for c in FACE_COLUMNS[6:]],
                                                               np.float32).reshape(5, 2))


def test_sidecar_missing_columns(synth_manifest, tmp_path):
    rows = _rows(synth_manifest.parent / "faces" / "s00_v0.csv")
    cols = [c for c in FACE_COLUMNS if c not in ("score", "nose_y")]
    p = _write(tmp_path / "f.csv", cols, [[r[c] for c in cols] for r in rows])
    with pytest.raises(LabelFileError) as exc:
        read_face_sidecar(p)
    assert str(p) in str(exc.value) and "lacks column(s) score, nose_y" in str(exc.value)


# ---------------------------------------------------------------------------
# 3. decoding
# ---------------------------------------------------------------------------

def _faststart(data: bytes) -> bytes:
    """Move the ``moov`` box in front of ``mdat`` (shifting the ``stco`` chunk offsets), like ``-movflags +faststart``,
    so that a truncated copy keeps its complete index but loses media data."""
    def boxes(buf, start, end):
        i = start
        while i < end:
            size, kind = struct.unpack(">I4s", bytes(buf[i:i + 8]))
            yield i, size, kind
            i += size

    top = {kind: (i, size) for i, size, kind in boxes(data, 0, len(data))}
    (moov_at, moov_len), (mdat_at, _) = top[b"moov"], top[b"mdat"]
    assert mdat_at < moov_at, "expected OpenCV's layout: mdat before moov"
    moov = bytearray(data[moov_at:moov_at + moov_len])

    def shift(start, end):
        for i, size, kind in boxes(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(i + 8, i + size)
            elif kind == b"stco":
                (n,) = struct.unpack(">I", moov[i + 12:i + 16])
                for k in range(n):
                    o = i + 16 + 4 * k
                    moov[o:o + 4] = struct.pack(">I", struct.unpack(">I", moov[o:o + 4])[0] + moov_len)
            assert kind != b"co64"

    shift(8, moov_len)
    return data[:mdat_at] + bytes(moov) + data[mdat_at:moov_at] + data[moov_at + moov_len:]


def test_decode_real_video(synth_manifest):
    path = synth_manifest.parent / "videos" / "s00_v0.mp4"
    reader, fps, n = open_video(path)
    assert (fps, n) == (25.0, T)
    chunks = list(iter_frames(reader, n, chunk=32))
    assert [s for s, _ in chunks] == [0, 32, 64]
    assert [c.shape for _, c in chunks] == [(32, 64, 64, 3), (32, 64, 64, 3), (16, 64, 64, 3)]
    frames = np.concatenate([c for _, c in chunks])
    assert frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, decord.VideoReader(str(path)).get_batch(list(range(T))).asnumpy())


def test_decode_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VideoDecodeError) as exc:
        open_video(p)
    assert str(p) in str(exc.value) and "empty (0 bytes)" in str(exc.value)


def test_decode_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="missing or empty") as exc:
        open_video(tmp_path / "nope.mp4")
    assert str(tmp_path / "nope.mp4") in str(exc.value)


def test_decode_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoDecodeError) as exc:
        open_video(p)
    assert str(p) in str(exc.value) and "cannot be decoded" in str(exc.value)


@pytest.mark.parametrize("layout", ["as_written", "faststart"])
def test_decode_truncated_file(synth_manifest, tmp_path, layout):
    """The first 30% of a real mp4. As OpenCV writes it (index at the end) the index is lost; with the index moved to
    the front it survives but most frames' data is gone. decord 0.6 indexes every packet when it opens a file, so both
    fail cleanly at open (no partial decode)."""
    data = (synth_manifest.parent / "videos" / "s00_v0.mp4").read_bytes()
    if layout == "faststart":
        data = _faststart(data)
        full = tmp_path / "full.mp4"
        full.write_bytes(data)
        assert open_video(full)[2] == T  # the rewrite itself is a valid video
    p = tmp_path / "truncated.mp4"
    p.write_bytes(data[: int(0.3 * len(data))])
    with pytest.raises(VideoDecodeError) as exc:
        open_video(p)
    assert str(p) in str(exc.value) and "cannot be decoded" in str(exc.value)


# ---------------------------------------------------------------------------
# 4. prepare() and the cache
# ---------------------------------------------------------------------------

def test_prepare_one_entry_per_video(synth_manifest, prepared_index, prepare_summary):
    entries = _index_entries(prepared_index)
    assert sorted(entries) == ["s00_v0", "s01_v0", "s02_v0"] == sorted(prepare_summary.ok)
    assert prepare_summary.skipped == {}
    cache_root = prepared_index.parent
    assert sorted(p.name for p in cache_root.iterdir() if p.is_dir()) == sorted(p.name for p in entries.values())
    for folder in entries.values():
        assert sorted(p.name for p in folder.iterdir()) == ENTRY_FILES


def test_prepare_entry_contents(synth_manifest, prepared_index):
    root = synth_manifest.parent
    for vid, folder in _index_entries(prepared_index).items():
        frames = np.load(folder / "frames.npy")
        valid = np.load(folder / "valid.npy")
        labels = np.load(folder / "labels.npy")
        scores = _scores(root / "faces" / f"{vid}.csv")
        meta = json.loads((folder / "meta.json").read_text())
        assert frames.shape == (T, 32, 32, 3) and frames.dtype == np.uint8
        assert valid.dtype == np.bool_
        np.testing.assert_array_equal(valid, scores >= 0.8)
        assert 0 < (~valid).sum() < T
        assert not frames[~valid].any()  # no-face frames are black
        assert labels.dtype == np.float32
        np.testing.assert_array_equal(labels, _labels(root / "labels" / f"{vid}.csv"))
        np.testing.assert_array_equal(np.load(folder / "scores.npy"), scores.astype(np.float32))
        assert (meta["video_id"], meta["num_frames"], meta["fps"]) == (vid, T, 25.0)
        assert meta["registration"] == asdict(REG)
        # A face crop is clearly not a black frame: bright on average, with structure.
        per_frame_mean = frames[valid].reshape(valid.sum(), -1).mean(axis=1)
        assert per_frame_mean.min() > 20
        assert frames[valid].reshape(valid.sum(), -1).std(axis=1).min() > 10


def test_prepare_crop_matches_sidecar_box(synth_manifest, prepared_index):
    """Frame t's crop is the decoded frame t cut at sidecar box t (enlarged by the 0.15 margin to a square, black
    outside the image) and resized to 32x32 -- including frames on both sides of the 64-frame decode chunk."""
    root = synth_manifest.parent
    folder = _index_entries(prepared_index)["s00_v0"]
    frames = np.load(folder / "frames.npy")
    video = decord.VideoReader(str(root / "videos" / "s00_v0.mp4")).get_batch(list(range(T))).asnumpy()
    rows = _rows(root / "faces" / "s00_v0.csv")
    checked = 0
    for t in (0, 1, 40, 62, 63, 64, 65, 79):
        if rows[t]["x1"] == "":
            continue
        x1, y1, x2, y2 = (float(rows[t][c]) for c in ("x1", "y1", "x2", "y2"))
        half = max(x2 - x1, y2 - y1) * 1.3 / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        l, tp, r, b = (int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
        canvas = np.zeros((64 + 200, 64 + 200, 3), np.uint8)
        canvas[100:164, 100:164] = video[t]
        expected = cv2.resize(canvas[tp + 100:b + 100, l + 100:r + 100], (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(frames[t], expected, err_msg=f"frame {t}")
        checked += 1
    assert checked >= 6


def test_prepare_valid_follows_score_threshold(synth_manifest, tmp_path):
    """Scores just below / at / above min_score=0.8 on frames that do have a box."""
    root = tmp_path / "ds"
    shutil.copytree(synth_manifest.parent, root)
    faces = root / "faces" / "s00_v0.csv"
    rows = _rows(faces)
    boxed = [t for t, r in enumerate(rows) if r["x1"] != ""]
    edits = dict(zip(boxed[:4], ["0.7900", "0.8000", "0.5000", "0.8100"]))
    for t, s in edits.items():
        rows[t]["score"] = s
    _write(faces, list(FACE_COLUMNS), [[r[c] for c in FACE_COLUMNS] for r in rows])
    index, summary = prepare(root / "manifest.csv", tmp_path / "cache", REG, progress=False)
    (cached,) = load_split(index, "train")
    assert cached.video_id == "s00_v0"
    scores = _scores(faces)
    np.testing.assert_array_equal(cached.valid, scores >= 0.8)
    assert [bool(cached.valid[t]) for t in edits] == [False, True, False, True]
    assert not cached.frames[boxed[0]].any() and cached.frames[boxed[1]].any()


def test_prepare_face_fraction(prepared_index, prepare_summary):
    valid = [np.load(f / "valid.npy") for f in _index_entries(prepared_index).values()]
    scores = [np.load(f / "scores.npy") for f in _index_entries(prepared_index).values()]
    n_valid = sum(int(v.sum()) for v in valid)
    assert prepare_summary.face_fraction == n_valid / (3 * T)
    assert prepare_summary.face_fraction == pytest.approx(230 / 240)  # synth seed 0: 10 no-face frames in 240
    assert prepare_summary.mean_score == pytest.approx(sum(float(s[v].sum()) for s, v in zip(scores, valid)) / n_valid)
    assert prepare_summary.lines()[:2] == ["videos ok: 3, skipped: 0",
                                           f"frames with a face: 95.8%, mean detection score: "
                                           f"{prepare_summary.mean_score:.3f}"]


def test_prepare_skips_broken_video(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"")
    rows.append(dict(rows[0], video_id="s09_v0", subject="s09", path=str(broken)))
    m = _write_manifest(tmp_path / "manifest.csv", rows)
    index_path, summary = prepare(m, tmp_path / "cache", REG, progress=False)
    assert summary.ok == ["s00_v0", "s01_v0", "s02_v0"]
    assert list(summary.skipped) == ["s09_v0"]
    reason = summary.skipped["s09_v0"]
    assert reason.startswith("VideoDecodeError:") and str(broken) in reason and "empty (0 bytes)" in reason
    assert f"  skipped s09_v0: {reason}" in summary.lines()
    index = json.loads(index_path.read_text())
    assert [v["video_id"] for v in index["videos"]] == ["s00_v0", "s01_v0", "s02_v0"]
    assert index["skipped"] == {"s09_v0": reason}
    assert summary.face_fraction == pytest.approx(230 / 240)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 3


def test_prepare_fails_when_nothing_prepares(synth_manifest, tmp_path):
    rows = _manifest_rows(synth_manifest)[:1]
    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    rows[0]["path"] = str(text)
    m = _write_manifest(tmp_path / "manifest.csv", rows)
    with pytest.raises(DataError, match="no video could be prepared") as exc:
        prepare(m, tmp_path / "cache", REG, progress=False)
    assert "s00_v0: VideoDecodeError" in str(exc.value) and str(text) in str(exc.value)


def test_prepare_second_run_rebuilds_nothing(synth_manifest, prepared_index, tmp_path, monkeypatch):
    cache_root = prepared_index.parent
    before = {p.name: _mtimes(p) for p in cache_root.iterdir() if p.is_dir()}

    def no_decoding(path):
        raise AssertionError(f"second prepare() decoded {path}")

    monkeypatch.setattr(build_mod, "open_video", no_decoding)
    index2, summary = prepare(synth_manifest, cache_root, REG, progress=False, index_path=tmp_path / "index.json")
    assert summary.skipped == {} and sorted(summary.ok) == ["s00_v0", "s01_v0", "s02_v0"]
    after = {p.name: _mtimes(p) for p in cache_root.iterdir() if p.is_dir()}
    assert after == before
    assert json.loads(index2.read_text())["videos"] == json.loads(prepared_index.read_text())["videos"]


def test_prepare_rebuilds_when_labels_or_faces_change(synth_manifest, tmp_path):
    """The entry holds labels and validity, so an edited label / face file must not be served from the old entry."""
    root = tmp_path / "ds"
    shutil.copytree(synth_manifest.parent, root)
    cache_root = tmp_path / "cache"
    index, _ = prepare(root / "manifest.csv", cache_root, REG, progress=False)
    old = _index_entries(index)
    labels_csv, faces_csv = root / "labels" / "s00_v0.csv", root / "faces" / "s00_v0.csv"
    rows = _rows(labels_csv)
    rows[0]["valence"], rows[0]["arousal"] = "0.125000", ""
    _write(labels_csv, ["frame", "valence", "arousal"], [[r["frame"], r["valence"], r["arousal"]] for r in rows])
    faces = _rows(faces_csv)
    t = next(i for i, r in enumerate(faces) if r["x1"] != "")
    faces[t]["score"] = "0.1000"
    _write(faces_csv, list(FACE_COLUMNS), [[r[c] for c in FACE_COLUMNS] for r in faces])

    index, summary = prepare(root / "manifest.csv", cache_root, REG, progress=False)
    new = _index_entries(index)
    assert new["s00_v0"] != old["s00_v0"]
    assert new["s01_v0"] == old["s01_v0"] and new["s02_v0"] == old["s02_v0"]
    (cached,) = load_split(index, "train")
    assert cached.labels[0, 0] == np.float32(0.125) and np.isnan(cached.labels[0, 1])
    assert not cached.valid[t] and not cached.frames[t].any()


def _race_worker(entry, cache_root, barrier, queue):
    """Child process: build ``entry`` but hold the final rename until the other child has built its copy too; report
    (status, entry folder, whether this process's rename won)."""
    import os as child_os

    real_rename, outcome = child_os.rename, []

    def rename(src, dst):
        barrier.wait(timeout=60)
        try:
            real_rename(src, dst)
        except OSError:
            outcome.append("lost")
            raise
        outcome.append("won")

    child_os.rename = rename  # build.py calls os.rename; this process does nothing but build this one entry
    try:
        folder = build_entry(entry, cache_root, Registration(size=32))
        queue.put(("ok", str(folder), outcome))
    except BaseException as exc:  # report to the parent instead of dying silently
        queue.put(("error", f"{type(exc).__name__}: {exc}", outcome))


def test_concurrent_build_of_same_entry(synth_manifest, tmp_path):
    """Two spawned processes build the same entry; both finish their copy before either renames it into place, so
    one rename must lose. Both succeed, one entry remains, no temporary folder is left."""
    entry = read_manifest(synth_manifest)[0]
    cache_root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(entry, str(cache_root), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]
    assert sorted(r[2][0] for r in results) == ["lost", "won"]  # the race really happened
    names = sorted(os.listdir(cache_root))
    assert names == [Path(results[0][1]).name]
    folder = cache_root / names[0]
    assert sorted(p.name for p in folder.iterdir()) == ENTRY_FILES
    frames = np.load(folder / "frames.npy")
    valid = np.load(folder / "valid.npy")
    assert frames.shape == (T, 32, 32, 3) and frames[valid].any() and not frames[~valid].any()


def test_index_lists_splits_and_entries(synth_manifest, prepared_index):
    index = json.loads(prepared_index.read_text())
    assert index["manifest"] == str(synth_manifest.resolve())
    assert index["cache_root"] == str(prepared_index.parent.resolve())
    assert index["registration"] == asdict(REG)
    assert prepared_index.name == f"index-{REG.digest()}.json"
    assert index["skipped"] == {}
    expected = [{"video_id": r["video_id"], "subject": r["subject"], "split": r["split"]}
                for r in _rows(synth_manifest)]
    assert [{k: v[k] for k in ("video_id", "subject", "split")} for v in index["videos"]] == expected
    for v in index["videos"]:
        assert (prepared_index.parent / v["entry"] / "meta.json").is_file()
        assert v["entry"].endswith(REG.digest())


def test_load_split_memory_maps(synth_manifest, prepared_index):
    split_of = {r["video_id"]: r["split"] for r in _rows(synth_manifest)}
    seen = []
    for split in ("train", "val", "test"):
        videos = load_split(prepared_index, split)
        assert [split_of[v.video_id] for v in videos] == [split] * len(videos)
        seen += [v.video_id for v in videos]
        for v in videos:
            assert isinstance(v.frames, np.memmap)
            assert not v.frames.flags.writeable
            with pytest.raises(ValueError):
                v.frames[0, 0, 0, 0] = 1
            assert v.num_frames == T and v.labels.shape == (T, 2) and v.valid.shape == (T,)
    assert sorted(seen) == ["s00_v0", "s01_v0", "s02_v0"]
    with pytest.raises(ValueError, match="no prepared video in split 'dev'"):
        load_split(prepared_index, "dev")


def test_load_split_follows_moved_cache(prepared_index, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(prepared_index.parent, moved)
    index = json.loads((moved / prepared_index.name).read_text())
    index["cache_root"] = str(tmp_path / "gone")
    (moved / prepared_index.name).write_text(json.dumps(index))
    (v,) = load_split(moved / prepared_index.name, "train")
    assert Path(v.frames.filename).parent.parent == moved
    np.testing.assert_array_equal(v.frames, load_split(prepared_index, "train")[0].frames)


def test_a_process_opens_a_split_once_until_its_index_is_rewritten(prepared_index, tmp_path):
    """A trial process trains trial after trial on one split: a second ``load_split`` returns the same videos in a new
    list; once ``emotune data prepare`` has rewritten the index (a new file in its place), the split is opened again."""
    import os

    index = tmp_path / prepared_index.name
    shutil.copy(prepared_index, index)
    first, again = load_split(index, "train"), load_split(index, "train")
    assert again is not first and len(again) == len(first)
    assert all(a is b for a, b in zip(first, again))
    staged = tmp_path / "index.tmp"
    staged.write_text(index.read_text())
    os.replace(staged, index)
    reopened = load_split(index, "train")
    assert not any(a is b for a, b in zip(first, reopened))
    for a, b in zip(first, reopened):
        assert a.video_id == b.video_id
        np.testing.assert_array_equal(a.frames, b.frames)
