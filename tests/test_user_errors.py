"""User errors end in one line, ``emotune: error: ...``, exit 2, no traceback, before any trial starts; a sweep whose
trials all error exits non-zero and names no best trial."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_sweep_e2e import SPACE, run_cli, synth_and_prepare

LAPTOP = ("--cpus-per-worker", "1", "--gpus-per-worker", "0")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("user-errors")
    index, _ = synth_and_prepare(work)
    (work / "e2e.yaml").write_text(SPACE)
    return work, index


def refused(proc, *fragments: str) -> str:
    """The one error line of a refused command, after checking its form."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("emotune: error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Leaderboard" not in proc.stdout and "dry run:" not in proc.stdout  # nothing started
    return errors[0]


@pytest.mark.parametrize("args, fragments", [
    # searched in smoke: a pinned value must lie inside the study's distribution
    (("--space", "smoke", "--set", "lr=-1"), ("--set lr=-1 lies outside the distribution", "loguniform")),
    # fixed in sequence_windows: the trial config's own range
    (("--space", "sequence_windows", "--set", "lr=-1"), ("--set: lr=-1 is not allowed; allowed: a number > 0",)),
    (("--space", "smoke", "--set", "lrr=0.1"), ("unknown trial setting 'lrr'; did you mean 'lr'?",)),
    (("--space", "smoke", "--set", "backbone=cnn_rnn_tiny", "--set", "freeze=none"),
     ("freeze='none' does not apply: backbone cnn_rnn_tiny takes no 'freeze' argument",)),
    # an 80-pixel crop of losses_augment's initial point on a 32-pixel cache
    (("--space", "losses_augment", "--set", "backbone=conv3d_resnet_gru_tiny", "--set", "window_length=32",
      "--set", "num_frames=32", "--set", "clip_len=32"), ("initial_points[0]", "aug_random_crop=80", "32x32")),
    # 200-frame windows on 72-frame videos
    (("--space", "smoke", "--set", "window_length=200"), ("window_length=200", "no training window",
                                                         "the longest training video has")),
    # shapes (trainables.shapes): a 20-pixel crop is not a multiple of the tiny ViT's 8-pixel patches
    (("--space", "smoke", "--set", "backbone=video_vit_tiny", "--set", "aug_random_crop=20"),
     ("input 20x20 is not a multiple of patch_size 8 for backbone video_vit_tiny", "aug_random_crop=20 cuts 20x20",
      "allowed: height and width multiples of 8")),
    # smoke searches SSTS strides 2, 3 and 4: of 20 frames, stride 3 gives clips of 7 or 6, which cannot share a batch
    (("--space", "smoke", "--set", "clip_len=20"),
     ("ssts_stride 3 does not divide clip_len 20: clips hold 7 or 6 frames",
      "allowed: ssts_stride in 1, 2, 4, 5, 10, 20")),
    # MIMAMO's phase differences need two frames
    (("--space", "sequence_windows", "--set", "backbone=mimamo_tiny", "--set", "num_frames=1", "--set", "clip_len=1"),
     ("backbone mimamo_tiny takes the phase difference of consecutive frames", "clips of 1 frame")),
    (("--space", "smoke", "--cpus-per-worker", "4"), ("one trial needs 4 CPU",)),
    (("--space", "nosuchstudy"), ("neither a file nor a shipped study",)),
    (("--space", "e2e.yaml", "--epochs", "0"), ("--epochs must be >= 1",)),
])
def test_refused_before_any_trial_starts(work, args, fragments):
    folder, index = work
    laptop = () if "--cpus-per-worker" in args else LAPTOP
    refused(run_cli("sweep", "--data", str(index), "--trials", "2", *laptop, *args, cwd=folder), *fragments)
    assert not (folder / "mlflow.db").exists()  # nothing was recorded either


def test_a_shape_only_one_combination_breaks_is_refused(work, tmp_path):
    """Backbone and crop searched together: each alone has a value that works, only the tiny ViT with the 20-pixel
    crop fails; the check tries every combination of the shape settings, so it is refused whatever the draws."""
    folder, index = work
    space = SPACE.replace("params:", "params:\n  backbone: {type: categorical, choices: [conv3d_resnet_gru_tiny, "
                          "video_vit_tiny]}\n  aug_random_crop: {type: categorical, choices: [0, 20]}")
    (tmp_path / "shapes.yaml").write_text(space.replace("rnn_hidden: 16, ", "").replace("backbone: cnn_rnn_tiny, ", ""))
    line = refused(run_cli("sweep", "--data", str(index), "--space", str(tmp_path / "shapes.yaml"), "--trials", "2",
                           *LAPTOP, cwd=folder),
                   "input 20x20 is not a multiple of patch_size 8 for backbone video_vit_tiny")
    assert line.startswith("emotune: error: shapes.yaml (params.")


def test_impossible_resources_are_refused_without_dry_run_too(work):
    folder, index = work
    proc = run_cli("sweep", "--data", str(index), "--space", "e2e.yaml", "--cpus-per-worker", "64", cwd=folder)
    refused(proc, "one trial needs 64 CPU")
    assert not (folder / "mlflow.db").exists()


def test_a_study_file_with_an_unknown_key(work, tmp_path):
    folder, index = work
    (tmp_path / "typo.yaml").write_text(SPACE.replace("ssts_stride:", "ssts_strid:"))
    refused(run_cli("sweep", "--data", str(index), "--space", str(tmp_path / "typo.yaml"), *LAPTOP, cwd=folder),
            "typo.yaml: params: unknown trial setting 'ssts_strid'; did you mean 'ssts_stride'?")
    (tmp_path / "top.yaml").write_text(SPACE.replace("params:", "parms:"))
    refused(run_cli("sweep", "--data", str(index), "--space", str(tmp_path / "top.yaml"), *LAPTOP, cwd=folder),
            "unknown top-level key(s) ['parms']")


def test_a_missing_dataset_index(work):
    folder, _ = work
    refused(run_cli("sweep", "--data", "nowhere.json", cwd=folder), "dataset index 'nowhere.json' not found")


def test_a_pinned_parameter_overrides_the_initial_point(work):
    """losses_augment's initial point has aug_random_crop=80; pinning 0 replaces it instead of clashing."""
    folder, index = work
    proc = run_cli("sweep", "--data", str(index), "--space", "losses_augment", "--dry-run", *LAPTOP,
                   "--set", "backbone=conv3d_resnet_gru_tiny", "--set", "window_length=32", "--set", "num_frames=32",
                   "--set", "clip_len=32", "--set", "aug_random_crop=0", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "configurations and" in proc.stdout and "dry run: 8 trials" in proc.stdout


def _with_field(row: str, i: int, value: str) -> str:
    fields = row.split(",")
    fields[i] = value
    return ",".join(fields)


@pytest.mark.parametrize("edit, fragments", [
    (lambda rows: rows + [rows[1]], ("duplicate",)),
    (lambda rows: [rows[0], rows[1].replace(".mp4", "-gone.mp4"), *rows[2:]], ("-gone.mp4",)),
    (lambda rows: [rows[0], rows[1], _with_field(rows[2], 2, rows[1].split(",")[2]), *rows[3:]],
     ("subject", "splits must be subject-disjoint")),
])
def test_a_bad_manifest_is_one_line(work, tmp_path, edit, fragments):
    folder, _ = work
    rows = (folder / "data" / "manifest.csv").read_text().splitlines()
    bad = folder / "data" / f"bad-{tmp_path.name}.csv"
    bad.write_text("\n".join(edit(rows)) + "\n")
    refused(run_cli("data", "prepare", "--manifest", str(bad), "--cache", str(tmp_path / "cache"), cwd=folder),
            *fragments)


def test_a_sweep_whose_trials_all_error_exits_non_zero_and_names_no_best(work, tmp_path):
    """A checkpoint file that exists but is not one passes the pre-flight check and fails inside every trial."""
    folder, index = work
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    proc = run_cli("sweep", "--data", str(index), "--space", "e2e.yaml", "--trials", "2", "--max-failures", "0",
                   "--name", "all-error", "--storage", str(tmp_path / "ray"), "--mlflow-uri",
                   f"sqlite:///{tmp_path / 'mlflow.db'}", "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}",
                   "--set", f"pretrained={garbage}", cwd=folder)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Best trial:    none" in proc.stdout
    assert "Trials:        0 complete, 0 stopped early, 0 diverged, 2 errored" in proc.stdout


def test_missing_face_weights_are_named_once_for_every_video(work, tmp_path):
    """Every video fails alike without face_alignment's weights: one line names the videos, the files and where to
    put them."""
    folder, _ = work
    (tmp_path / "empty").mkdir()
    line = refused(run_cli("data", "prepare", "--manifest", "data/manifest.csv", "--cache", str(tmp_path / "cache"),
                           "--detector", "face_alignment", "--weights-dir", str(tmp_path / "empty"), cwd=folder,
                           timeout=300),
                   "no video could be prepared: s00_v0, s01_v0, s02_v0: MissingWeightsError", "s3fd-619a316812.pth",
                   "emotune data fetch-weights")
    assert line.count("MissingWeightsError") == 1
