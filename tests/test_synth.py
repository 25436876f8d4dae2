"""Tests for the synthetic face-video generator (trainables.prepare.synth)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from trainables.prepare import synth
from trainables.prepare.synth import (FACE_COLUMNS, VARIANTS, assign_splits, lag_labels, per_second_labels,
                                      render_states, synthesize)

decord = pytest.importorskip("decord")

SMALL = dict(subjects=3, videos_per_subject=1, frames=60, fps=25, size=64, progress=False)


def _files(root):
    """Relative path -> bytes for every CSV / JSON file of a dataset."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith((".csv", ".json")):
                p = os.path.join(dirpath, n)
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def _decode(path):
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _manifest(manifest_path):
    return pd.read_csv(manifest_path)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    m = synthesize(root / "a", seed=0, **SMALL)
    return m


@pytest.fixture(scope="module")
def ds_long(tmp_path_factory):
    """Longer videos with more no-face frames, for statistics."""
    root = tmp_path_factory.mktemp("synth_long")
    return synthesize(root / "d", subjects=3, videos_per_subject=1, frames=200, fps=25, size=64,
                      blank_rate=0.1, lag_frames=6, seed=5, progress=False)


# ---------------------------------------------------------------------------
# Layout and determinism
# ---------------------------------------------------------------------------

def test_layout_and_formats(ds):
    root = ds.parent
    assert ds.name == "manifest.csv"
    man = _manifest(ds)
    assert list(man.columns) == ["video_id", "path", "subject", "split", "labels", "faces"]
    assert list(man.video_id) == ["s00_v0", "s01_v0", "s02_v0"]
    for _, r in man.iterrows():
        assert not os.path.isabs(r.path)
        assert r.path == f"videos/{r.video_id}.mp4"
        assert r.labels == f"labels/{r.video_id}.csv"
        assert r.faces == f"faces/{r.video_id}.csv"
        for col in ("path", "labels", "faces"):
            assert (root / r[col]).is_file()
        with open(root / r.labels) as fh:
            lines = fh.read().splitlines()
        assert lines[0] == "frame,valence,arousal"
        assert len(lines) == 1 + SMALL["frames"]
        assert all(len(x.split(",")[1].split(".")[1]) == 6 for x in lines[1:])
        with open(root / r.faces) as fh:
            header = next(csv.reader(fh))
        assert header == FACE_COLUMNS
    meta = json.loads((root / "metadata.json").read_text())
    for k, v in SMALL.items():
        if k != "progress":
            assert meta[k] == v
    assert meta["generator"] == "emotune.synth" and meta["version"] == 1
    assert meta["lag_frames"] == 4 and meta["blank_rate"] == 0.04 and meta["seed"] == 0
    assert meta["variant"] == "per_frame" and meta["label_rate"] == 25
    assert meta["dims"] == ["valence", "arousal"]
    # No temp folders left next to the dataset.
    assert [p.name for p in root.parent.iterdir()] == [root.name]


def test_same_seed_identical_different_seed_differs(ds, tmp_path):
    again = synthesize(tmp_path / "b", seed=0, **SMALL)
    a, b = _files(ds.parent), _files(again.parent)
    assert a.keys() == b.keys() and len(a) == 2 * 3 + 2
    assert a == b
    for vid in ("s00_v0", "s02_v0"):
        fa = _decode(ds.parent / "videos" / f"{vid}.mp4")
        fb = _decode(again.parent / "videos" / f"{vid}.mp4")
        assert np.array_equal(fa, fb)
    other = synthesize(tmp_path / "c", seed=1, **SMALL)
    c = _files(other.parent)
    for vid in ("s00_v0", "s01_v0", "s02_v0"):
        assert a[f"labels/{vid}.csv"] != c[f"labels/{vid}.csv"]


def test_existing_dataset_reused_or_refused(ds, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in ds.parent.rglob("*")}
    assert synthesize(ds.parent, seed=0, **SMALL) == ds
    assert {p: p.stat().st_mtime_ns for p in ds.parent.rglob("*")} == before
    with pytest.raises(FileExistsError, match="different parameters"):
        synthesize(ds.parent, seed=1, **SMALL)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(FileExistsError, match="metadata.json"):
        synthesize(junk, **SMALL)
    # An empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthesize(empty, **SMALL) == empty / "manifest.csv"


def test_video_decodes_with_decord(ds):
    man = _manifest(ds)
    for p in man.path:
        vr = decord.VideoReader(str(ds.parent / p))
        assert len(vr) == SMALL["frames"]
        assert vr[0].shape == (SMALL["size"], SMALL["size"], 3)
        assert abs(vr.get_avg_fps() - SMALL["fps"]) < 1e-3


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------

def test_labels_range_spread_and_planted_lag(ds_long):
    meta = json.loads((ds_long.parent / "metadata.json").read_text())
    lag, frames, fps = meta["lag_frames"], meta["frames"], meta["fps"]
    assert lag == 6
    for _, r in _manifest(ds_long).iterrows():
        si, vi = int(r.subject[1:]), int(r.video_id.split("_v")[1])
        lab = pd.read_csv(ds_long.parent / r.labels)
        assert list(lab.frame) == list(range(frames))
        y = lab[["valence", "arousal"]].to_numpy()
        assert y.min() >= -1.0 and y.max() <= 1.0
        assert (y.std(axis=0) > 0.2).all()
        states = render_states(meta["seed"], si, vi, frames, fps)
        np.testing.assert_allclose(y, lag_labels(states, lag), atol=1e-6)
        np.testing.assert_allclose(y[lag:], states[:-lag], atol=1e-6)
        np.testing.assert_allclose(y[:lag], np.repeat(states[:1], lag, axis=0), atol=1e-6)
        assert np.abs(y - states).max() > 0.01  # the lag actually changes the labels

        # The rendered frames show state[t], not label[t]: the mouth-corner height
        # in the sidecar (relative to the nose) is an exact linear function of the
        # valence shown, so it is fit best by labels shifted back by exactly `lag`.
        faces = pd.read_csv(ds_long.parent / r.faces)
        lift = (faces.ml_y - faces.nose_y).to_numpy()
        vis = faces.score.to_numpy() > 0
        residuals = []
        for k in range(0, 2 * lag + 1):
            shown = np.concatenate([y[k:, 0], np.full(k, np.nan)])  # label[t + k] as a guess of what frame t shows
            ok = vis & ~np.isnan(shown)
            coef = np.polyfit(shown[ok], lift[ok], 1)
            residuals.append(np.abs(np.polyval(coef, shown[ok]) - lift[ok]).max())
        assert int(np.argmin(residuals)) == lag
        assert residuals[lag] < 0.05  # only the 2-decimal rounding of the sidecar


def test_states_full_range_and_independent():
    s = render_states(0, 0, 0, 250, 25)
    assert s.shape == (250, 2)
    np.testing.assert_allclose(s.min(axis=0), -1.0)
    np.testing.assert_allclose(s.max(axis=0), 1.0)
    assert not np.allclose(s, render_states(0, 0, 1, 250, 25))
    assert not np.allclose(s, render_states(0, 1, 0, 250, 25))
    assert abs(np.corrcoef(s[:, 0], s[:, 1])[0, 1]) < 0.95


def test_per_second_variant(ds, tmp_path):
    m = synthesize(tmp_path / "ps", variant="per_second", seed=0, **SMALL)
    meta = json.loads((m.parent / "metadata.json").read_text())
    assert meta["label_rate"] == 1 and meta["variant"] == "per_second"
    n = math.ceil(SMALL["frames"] / SMALL["fps"])
    for vid in ("s00_v0", "s01_v0", "s02_v0"):
        sec = pd.read_csv(m.parent / "labels" / f"{vid}.csv")
        assert list(sec.columns) == ["second", "valence", "arousal"]
        assert len(sec) == n and list(sec.second) == list(range(n))
        per_frame = pd.read_csv(ds.parent / "labels" / f"{vid}.csv")[["valence", "arousal"]].to_numpy()
        np.testing.assert_allclose(sec[["valence", "arousal"]].to_numpy(),
                                   per_second_labels(per_frame, SMALL["fps"]), atol=2e-6)
        np.testing.assert_allclose(sec.valence[0], per_frame[:25, 0].mean(), atol=2e-6)
        np.testing.assert_allclose(sec.arousal[n - 1], per_frame[50:, 1].mean(), atol=2e-6)
        # Video and sidecar stay per frame.
        assert len(pd.read_csv(m.parent / "faces" / f"{vid}.csv")) == SMALL["frames"]


def test_unknown_variant_raises(tmp_path):
    with pytest.raises(ValueError) as e:
        synthesize(tmp_path / "x", variant="nope", **SMALL)
    for name in VARIANTS:
        assert name in str(e.value)
    assert not (tmp_path / "x").exists()


def test_subject_shift_variant(ds, tmp_path):
    m = synthesize(tmp_path / "sh", variant="subject_shift", seed=0, **SMALL)
    meta = json.loads((m.parent / "metadata.json").read_text())
    assert meta["label_rate"] == 25
    split = {s: k for k, ss in meta["splits"].items() for s in ss}
    for vid in ("s00_v0", "s01_v0", "s02_v0"):
        # Labels and sidecar geometry do not depend on appearance.
        assert (m.parent / "labels" / f"{vid}.csv").read_bytes() == (ds.parent / "labels" / f"{vid}.csv").read_bytes()
        a = _decode(ds.parent / "videos" / f"{vid}.mp4")[0].astype(float)
        b = _decode(m.parent / "videos" / f"{vid}.mp4")[0].astype(float)
        if split[vid[:3]] == "train":
            assert np.array_equal(a, b)
        else:
            assert np.abs(a - b).mean() > 20  # different skin / background


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 4, 5, 8, 13])
def test_splits_subject_disjoint(n):
    sp = assign_splits(n, seed=0)
    assert set(sp) == {"train", "val", "test"}
    all_ids = [s for ss in sp.values() for s in ss]
    assert sorted(all_ids) == [f"s{i:02d}" for i in range(n)]  # each subject exactly once
    assert len(sp["val"]) >= 1 and len(sp["test"]) >= 1 and len(sp["train"]) >= 1
    if n == 8:
        assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (5, 2, 1)


def test_manifest_splits_match_metadata(ds):
    meta = json.loads((ds.parent / "metadata.json").read_text())
    man = _manifest(ds)
    split = {s: k for k, ss in meta["splits"].items() for s in ss}
    assert sum(map(len, meta["splits"].values())) == len(split) == 3
    for _, r in man.iterrows():
        assert r.split == split[r.subject]
    assert man.groupby("subject").split.nunique().max() == 1


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_subjects_raises(n, tmp_path):
    with pytest.raises(ValueError, match=">= 3"):
        synthesize(tmp_path / "x", **{**SMALL, "subjects": n})


# ---------------------------------------------------------------------------
# Missing faces and the visual signal
# ---------------------------------------------------------------------------

def _runs(mask):
    runs, n = [], 0
    for m in list(mask) + [False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_no_face_frames(ds_long):
    root = ds_long.parent
    total = missing = 0
    for _, r in _manifest(ds_long).iterrows():
        faces = pd.read_csv(root / r.faces)
        assert list(faces.frame) == list(range(len(faces)))
        nf = (faces.score == 0).to_numpy()
        vis = ~nf
        total += len(faces)
        missing += nf.sum()
        assert all(2 <= n <= 6 for n in _runs(nf))
        # Missing rows: empty box and landmarks; visible rows: full, in-frame, jittered score.
        assert faces.loc[nf, FACE_COLUMNS[1:5] + FACE_COLUMNS[6:]].isna().all().all()
        assert faces.loc[vis, FACE_COLUMNS[1:]].notna().all().all()
        assert faces.score[vis].between(0.9, 1.0).all() and faces.score[vis].std() > 0.01
        box = faces.loc[vis, ["x1", "y1", "x2", "y2"]].to_numpy()
        assert (box >= 0).all() and (box <= 64).all()
        assert ((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])).all()
        lm = faces.loc[vis, FACE_COLUMNS[6:]].to_numpy().reshape(-1, 5, 2)
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
        assert (lm[:, 0, 1] < lm[:, 2, 1]).all() and (lm[:, 2, 1] < lm[:, 3, 1]).all()
        # Missing frames look different where the face was.
        frames = _decode(root / r.path).astype(float)
        vis_idx = np.where(vis)[0]
        for t in np.where(nf)[0]:
            ref = vis_idx[np.argmin(np.abs(vis_idx - t))]
            x1, y1, x2, y2 = faces.loc[ref, ["x1", "y1", "x2", "y2"]].astype(int)
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            h = (x2 - x1) // 4
            diff = np.abs(frames[t, cy - h:cy + h, cx - h:cx + h] - frames[ref, cy - h:cy + h, cx - h:cx + h]).mean()
            assert diff > 15, (r.video_id, t, diff)
    assert abs(missing / total - 0.1) < 0.02


def test_default_blank_rate_fraction(ds):
    nf = [(pd.read_csv(ds.parent / p).score == 0).mean() for p in _manifest(ds).faces]
    assert 0.02 <= np.mean(nf) <= 0.07


def _region_mean(gray, x, y, hw, hh):
    x0, x1 = int(round(x - hw)), int(round(x + hw)) + 1
    y0, y1 = int(round(y - hh)), int(round(y + hh)) + 1
    return gray[max(y0, 0):y1, max(x0, 0):x1].mean()


def test_visual_signal_tracks_state(ds_long):
    root = ds_long.parent
    meta = json.loads((root / "metadata.json").read_text())
    for _, r in _manifest(ds_long).iterrows():
        si, vi = int(r.subject[1:]), int(r.video_id.split("_v")[1])
        states = render_states(meta["seed"], si, vi, meta["frames"], meta["fps"])
        faces = pd.read_csv(root / r.faces)
        gray = _decode(root / r.path).astype(float).mean(axis=-1)
        vis = np.where(faces.score > 0)[0]
        eye, mouth = [], []
        for t in vis:
            f = faces.loc[t]
            w = f.x2 - f.x1
            eye.append(np.mean([_region_mean(gray[t], f.le_x, f.le_y, 0.08 * w, 0.07 * w),
                                _region_mean(gray[t], f.re_x, f.re_y, 0.08 * w, 0.07 * w)]))
            # Below the corners' height at the mouth centre: dark when smiling.
            mw = f.mr_x - f.ml_x
            mouth.append(_region_mean(gray[t], (f.ml_x + f.mr_x) / 2, f.ml_y + 0.1 * w, 0.15 * mw, 0.1 * w))
        r_eye = np.corrcoef(eye, states[vis, 1])[0, 1]
        r_mouth = np.corrcoef(mouth, states[vis, 0])[0, 1]
        assert abs(r_eye) > 0.5, (r.video_id, r_eye)
        assert abs(r_mouth) > 0.5, (r.video_id, r_mouth)

        # Arousal also drives head speed: faster motion when arousal is high.
        nose = faces[["nose_x", "nose_y"]].to_numpy()
        step = np.linalg.norm(np.diff(nose, axis=0), axis=1)  # NaN across missing frames
        a = states[1:, 1]
        hi, lo = np.nanmean(step[a > 0.3]), np.nanmean(step[a < -0.3])
        assert hi > 2 * lo, (r.video_id, hi, lo)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthesize(tmp_path / "x", **{**SMALL, "frames": 0})
    with pytest.raises(ValueError):
        synthesize(tmp_path / "x", **{**SMALL, "blank_rate": 0.9})
    with pytest.raises(ValueError):
        synthesize(tmp_path / "x", **{**SMALL, "lag_frames": -1})
    assert synth.FOURCC in ("mp4v", "avc1")
