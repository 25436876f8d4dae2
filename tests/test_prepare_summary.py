"""``emotune data prepare`` tells about each video: its face share, a warning naming the videos with few faces, and
``--min-face-share`` to leave them out. Real ``prepare`` (through the CLI and the function) on the synthetic dataset
of tests/conftest.py, where one video's face sidecar is edited so that only 4 of its 80 frames keep a face."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cluster.cli import main
from trainables.prepare.registration import Registration
from trainables.prepare.run import prepare

FEW = "s01_v0"  # the test-split video; 4 of its 80 frames keep a detection score >= 0.8
# Frames with a face in the synthetic dataset (seed 0, 80 frames each): s00_v0 77, s02_v0 76.
SHARES = {"s00_v0": 77 / 80, FEW: 4 / 80, "s02_v0": 76 / 80}


@pytest.fixture(scope="module")
def few_faces_manifest(synth_manifest, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("few_faces") / "ds"
    shutil.copytree(synth_manifest.parent, root)
    faces = root / "faces" / f"{FEW}.csv"
    rows = list(csv.reader(faces.open()))
    kept = 0
    for r in rows[1:]:
        has_face = r[1] != "" and float(r[5]) >= 0.8
        if has_face and kept < 4:
            kept += 1
        elif r[1] != "":
            r[5] = "0.1000"  # the box stays, but a low score marks the frame invalid (like a street scene's)
    assert kept == 4
    with faces.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return root / "manifest.csv"


def test_summary_lists_each_video_and_warns_about_few_faces(few_faces_manifest, tmp_path):
    index, summary = prepare(few_faces_manifest, tmp_path / "cache", Registration(size=32), progress=False)
    assert summary.ok == ["s00_v0", FEW, "s02_v0"] and summary.skipped == {}
    assert summary.face_share == SHARES
    assert summary.face_fraction == 157 / 240
    lines = summary.lines()
    assert lines[0] == "videos ok: 3, skipped: 0"
    assert lines[1].startswith("frames with a face: 65.4%, mean detection score: ")
    assert lines[2:] == [
        "face share per video: min 5.0% (s01_v0), median 95.0%, max 96.2% (s00_v0)",
        "  s00_v0: face on 96.2% of frames",
        "  s01_v0: face on 5.0% of frames",
        "  s02_v0: face on 95.0% of frames",
        "warning: 1 video(s) in the index have a face on fewer than 50.0% of their frames: s01_v0 (5.0%); check the "
        "face detection, or leave them out with --min-face-share",
    ]
    written = json.loads(index.read_text())
    assert [v["video_id"] for v in written["videos"]] == ["s00_v0", FEW, "s02_v0"]
    assert written["face_share"] == SHARES


def test_cli_min_face_share_skips_the_video_and_keeps_the_others(few_faces_manifest, tmp_path, capsys):
    index_path = tmp_path / "index.json"
    code = main(["data", "prepare", "--manifest", str(few_faces_manifest), "--cache", str(tmp_path / "cache"),
                 "--size", "32", "--index", str(index_path), "--min-face-share", "0.5", "--warn-face-share", "0.96"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "videos ok: 2, skipped: 1"
    assert out[1].startswith("frames with a face: 95.6%, mean detection score: ")  # 153 of 160 frames
    assert out[2:] == [
        "face share per video: min 95.0% (s02_v0), median 95.6%, max 96.2% (s00_v0)",
        "  s00_v0: face on 96.2% of frames",
        "  s02_v0: face on 95.0% of frames",
        "warning: 1 video(s) in the index have a face on fewer than 96.0% of their frames: s02_v0 (95.0%); check the "
        "face detection, or leave them out with --min-face-share",
        "  skipped s01_v0: face on 5.0% of frames, below --min-face-share 0.5",
        f"dataset index: {index_path}",
    ]
    written = json.loads(index_path.read_text())
    assert [v["video_id"] for v in written["videos"]] == ["s00_v0", "s02_v0"]  # the skipped video is not indexed
    assert written["skipped"] == {FEW: "face on 5.0% of frames, below --min-face-share 0.5"}
    assert written["face_share"] == SHARES  # its share is still recorded


def test_face_share_thresholds_must_be_shares(synth_manifest, tmp_path):
    with pytest.raises(ValueError, match=r"min_face_share must be a share of frames in \[0, 1\], got 50"):
        prepare(synth_manifest, tmp_path / "cache", Registration(size=32), progress=False, min_face_share=50)


def test_a_video_too_small_to_crop_is_skipped_with_its_reason(synth_manifest, tmp_path):
    """A real 48x48 video (rendered by ``data synth`` with its own labels and face boxes) in place of one 64x64 video:
    decord fails on its first frames, so it is skipped for its size, named in the summary, and the others are
    prepared."""
    from trainables.prepare.synth import synthesize
    from trainables.shapes import MIN_FRAME_SIDE

    root = tmp_path / "ds"
    shutil.copytree(synth_manifest.parent, root)
    small = synthesize(tmp_path / "small", subjects=3, videos_per_subject=1, frames=80, size=48, progress=False)
    for sub, ext in (("videos", "mp4"), ("labels", "csv"), ("faces", "csv")):
        shutil.copy(small.parent / sub / f"{FEW}.{ext}", root / sub / f"{FEW}.{ext}")
    index, summary = prepare(root / "manifest.csv", tmp_path / "cache", Registration(size=32), progress=False)
    assert summary.ok == ["s00_v0", "s02_v0"] and list(summary.skipped) == [FEW]
    reason = summary.skipped[FEW]
    assert reason.startswith(f"VideoTooSmallError: video {root / 'videos' / FEW}.mp4: frames of 48x48 pixels")
    assert f"smaller than the {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE}" in reason
    assert summary.lines()[0] == "videos ok: 2, skipped: 1"
    assert summary.lines()[-1] == f"  skipped {FEW}: {reason}"
    assert json.loads(index.read_text())["skipped"] == {FEW: reason}
    # without the size check decord is what fails on this video, with an internal message
    import decord

    reader = decord.VideoReader(str(root / "videos" / f"{FEW}.mp4"), ctx=decord.cpu(0), num_threads=1)
    with pytest.raises(decord.DECORDError, match="size must exactly match"):
        reader.get_batch([0, 1]).asnumpy()
