"""The walking skeleton end to end through the real CLI: synth -> prepare -> a real Ray Tune sweep (Optuna + ASHA,
Ray Train workers) -> MLflow records. Small, but every component is the one a user runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPACE = """
name: e2e
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 2, grace: 1, reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
fixed: {backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, ssts_stochastic: true,
        batch_size: 8, w_ccc: 1.0, seed: 0, rnn_hidden: 16, window_overlap: 0.5}
params:
  lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
  ssts_stride: {type: categorical, choices: [4, 6]}
  w_mse: {type: uniform, low: 0.0, high: 1.0}
"""


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed ``emotune`` command, as a user runs it; the exit status is the caller's to check."""
    exe = Path(sys.executable).with_name("emotune")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def emotune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``run_cli`` that must succeed."""
    proc = run_cli(*args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"emotune {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def synth_and_prepare(work: Path, frames: int = 72) -> tuple[Path, str]:
    """A 3-subject synthetic dataset in ``work/data`` prepared into ``work/cache`` through the CLI; returns the
    absolute dataset index path and what `data prepare` printed."""
    emotune("data", "synth", "--out", "data", "--subjects", "3", "--videos-per-subject", "1", "--frames", str(frames),
            "--size", "64", cwd=work)
    prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache", "--size", "32", cwd=work)
    return (work / prep.stdout.split("dataset index: ")[1].strip()).resolve(), prep.stdout


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    index, prepared = synth_and_prepare(work)
    (work / "e2e.yaml").write_text(SPACE)
    # The store named by MLFLOW_TRACKING_URI, not ./mlflow.db of the folder the sweep runs in.
    (work / "elsewhere").mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        sweep = emotune("sweep", "--space", str(work / "e2e.yaml"), "--data", str(index), "--trials", "3", "--name",
                        "e2e", "--seed", "1", cwd=work / "elsewhere")
    return work, prepared, sweep.stdout


def test_the_sweep_records_to_the_store_mlflow_tracking_uri_names(sweep_run):
    work, _, out = sweep_run
    assert f"MLflow store:  sqlite:///{work / 'mlflow.db'}" in out
    assert (work / "mlflow.db").is_file() and not (work / "elsewhere" / "mlflow.db").exists()


def test_prepare_reports_summary(sweep_run):
    _, out, _ = sweep_run
    assert "videos ok: 3, skipped: 0" in out
    assert "frames with a face:" in out


def test_leaderboard_lists_every_trial(sweep_run):
    _, _, out = sweep_run
    board = out.split("Leaderboard of sweep e2e")[1]
    rows = [line for line in board.splitlines() if line[:1].isdigit()]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert "ccc_valence" in board and "ccc_arousal" in board
    assert "MLflow store:" in out and "Best trial:" in out


def test_mlflow_parent_and_child_runs(sweep_run):
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("emotune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"data_index_sha1", "manifest_sha1", "space"} <= set(parents[0].data.params)
    assert parents[0].data.tags["emotune.git_commit"]
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"e2e.yaml", "sweep.json"}
    assert len(children) == 3
    best_run = parents[0].data.tags["emotune.best_run_id"]
    for child in children:
        assert {"lr", "ssts_stride", "w_mse", "backbone"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_ccc_mean")
        epochs = int(child.data.tags["emotune.epochs_run"])
        assert [m.step for m in history] == list(range(1, epochs + 1))
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "checkpoint"} <= artifacts  # every trial keeps its best checkpoint
        assert child.data.metrics["best_val_ccc_mean"] == max(m.value for m in history)
    ckpt = {a.path for a in client.list_artifacts(best_run, "checkpoint")}
    assert {"checkpoint/state.pt", "checkpoint/val_predictions.npz"} <= ckpt
    config = json.loads((Path(client.download_artifacts(best_run, "config.json"))).read_text())
    assert config["backbone"] == "cnn_rnn_tiny" and config["epochs"] == 2


def test_trial_metrics_are_on_the_label_timeline(sweep_run):
    """The checkpointed validation predictions cover every label step of every validation video."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("emotune")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    path = client.download_artifacts(parent.data.tags["emotune.best_run_id"], "checkpoint/val_predictions.npz")
    preds = np.load(path)
    assert len(preds.files) == 1  # one validation subject with one video
    assert preds[preds.files[0]].shape == (72, 2)
    assert np.isfinite(preds[preds.files[0]]).all()


def test_reports_time_each_trials_start_up_and_epochs_inside_its_run(sweep_run):
    """What the overhead benchmark reads: every report carries the trial's start-up marks and its epoch's start, in
    order, and each trial's MLflow run spans them (Tune's trial start before the trial function, its end after the
    last epoch)."""
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = {r.data.tags["emotune.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("emotune").experiment_id]) if "emotune.trial_id" in r.data.tags}
    results = sorted((work / "elsewhere" / "ray_results" / "e2e").glob("trial-*/result.json"))
    assert len(results) == 3
    for path in results:
        reports = [json.loads(line) for line in path.read_text().splitlines()]
        first, last = reports[0], reports[-1]
        assert first["trial_entered_at"] <= first["fit_started_at"] <= first["built_at"] <= first["unit_started_at"]
        for before, after in zip(reports, reports[1:]):
            assert before["unit_started_at"] + before["epoch_time_s"] <= after["unit_started_at"]
        assert all(r["checkpoint_write_s"] > 0 for r in reports)
        run = runs[first["trial_id"]].info
        assert run.start_time / 1000 <= first["trial_entered_at"] + 0.01
        assert run.end_time / 1000 >= last["unit_started_at"] + last["epoch_time_s"] - 0.01


FAMILIES = """
name: families
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 1, grace: 1, reduction_factor: 2}
fixed: {window_length: 24, clip_len: 24, label_fusion: mean, batch_size: 8, seed: 0, lr: 0.001, window_overlap: 0.5,
        ssts_stride: 3, w_ccc: 1.0, ema_decay: 0.9, warmup_epochs: 0.5, grad_clip: 1.0, aug_hflip: 0.5}
params:
  backbone: {type: categorical, choices: [cnn_rnn_tiny, i3d_tiny, conv3d_resnet_gru_tiny]}
  w_ce: {type: categorical, choices: [0.0, 0.5]}
initial_points:
  - {backbone: cnn_rnn_tiny, w_ce: 0.5}
  - {backbone: i3d_tiny, w_ce: 0.0}
  - {backbone: conv3d_resnet_gru_tiny, w_ce: 0.5}
"""


def test_one_epoch_of_every_backbone_family_in_real_trials(sweep_run):
    """Each architecture family trains an epoch inside a real trial (Ray Train worker, Tune, MLflow), with the CE
    loss's class logits for two of them."""
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    (work / "families.yaml").write_text(FAMILIES)
    index = next((work / "cache").glob("index-*.json"))
    emotune("sweep", "--space", "families.yaml", "--data", str(index), "--trials", "3", "--name", "families",
            "--experiment", "families", cwd=work)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("families").experiment_id])
    children = {r.data.params["backbone"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"cnn_rnn_tiny", "i3d_tiny", "conv3d_resnet_gru_tiny"}
    for run in children.values():
        assert run.info.status == "FINISHED" and run.data.tags["emotune.epochs_run"] == "1"
        assert -1.0 < run.data.metrics["val_ccc_mean"] <= 1.0
        assert run.data.metrics["train_loss"] > 0


FRACTION = """
name: fraction
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: data_fraction, per_epoch: 2, max: 3, grace: 1, reduction_factor: 2}
fixed: {backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, batch_size: 4, seed: 0,
        window_overlap: 0.75, ssts_stride: 4, rnn_hidden: 16, postprocess: false}
params:
  lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
"""


def test_data_fraction_fidelity_reports_every_half_epoch(sweep_run):
    """With a data-fraction fidelity a trial reports after each half epoch (ASHA's unit) and stops after 3 halves."""
    import json as _json

    work, _, _ = sweep_run
    (work / "fraction.yaml").write_text(FRACTION)
    index = next((work / "cache").glob("index-*.json"))
    out = emotune("sweep", "--space", "fraction.yaml", "--data", str(index), "--trials", "1", "--name", "fraction",
                  "--experiment", "fraction", cwd=work).stdout
    assert "reports" in out.split("Leaderboard of sweep fraction")[1]
    result = next((work / "ray_results" / "fraction").glob("trial-*/result.json"))
    reports = [_json.loads(line) for line in result.read_text().splitlines()]
    assert [r["step"] for r in reports] == [1, 2, 3]
    assert [r["data_fraction"] for r in reports] == [0.5, 1.0, 1.5]
    assert [r["epoch"] for r in reports] == [1, 1, 2]


def test_two_worker_ddp_trial_through_ray_train(sweep_run):
    """More than one worker per trial: the sweep picks the Ray Train executor, two CPU workers train with DDP (gloo)
    and the trial's run holds its metrics and best checkpoint like an inline one; one worker trains inline."""
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    index = next((work / "cache").glob("index-*.json"))
    emotune("sweep", "--space", "e2e.yaml", "--data", str(index), "--trials", "1", "--name", "ddp", "--workers", "2",
            "--set", "lr=0.001", "--set", "ssts_stride=4", "--set", "w_mse=0.5", "--experiment", "ddp", cwd=work)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert parent.data.params["executor"] == "train" and parent.data.params["workers"] == "2"
    assert child.info.status == "FINISHED" and child.data.tags["emotune.epochs_run"] == "2"
    assert "checkpoint/state.pt" in {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
    assert list((work / "ray_results" / "ddp" / "train").glob("trial-*/checkpoint_*"))  # Train's own storage
    e2e = next(r for r in client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
               if "mlflow.parentRunId" not in r.data.tags)
    assert e2e.data.params["executor"] == "inline"


def test_a_finite_study_trains_each_configuration_once_then_ends(sweep_run):
    """--trials 4 on a study of 2 configurations: 2 trials, each once, and the sweep says why it ended early."""
    from mlflow.tracking import MlflowClient

    work, _, _ = sweep_run
    index = next((work / "cache").glob("index-*.json"))
    (work / "two.yaml").write_text(SPACE.replace("e2e", "two").replace(
        "  lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n", "").replace(
        "  w_mse: {type: uniform, low: 0.0, high: 1.0}\n", ""))
    out = emotune("sweep", "--space", "two.yaml", "--data", str(index), "--trials", "4", "--name", "two",
                  "--epochs", "1", cwd=work).stdout
    assert "every one of the study's 2 configurations has been tried; the sweep ends here" in out
    board = out.split("Leaderboard of sweep two")[1]
    strides = sorted(int(line.split()[2]) for line in board.splitlines() if line[:1].isdigit())
    assert strides == [4, 6], board
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = [client.get_experiment_by_name("emotune").experiment_id]
    parent, = client.search_runs(experiment, filter_string="tags.`emotune.sweep` = 'two'")
    children = client.search_runs(experiment, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and parent.info.status == "FINISHED"


def test_the_same_sweep_command_again_is_refused_in_one_line_and_starts_nothing(sweep_run, monkeypatch):
    """A user re-runs the command that made the sweep: refused before Ray starts, pointing at --resume, and the
    sweep is left as it was."""
    work, _, _ = sweep_run
    storage = work / "elsewhere" / "ray_results"
    runs_before = len(list((storage / "e2e").glob("trial-*")))
    index = next((work / "cache").glob("index-*.json"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    proc = run_cli("sweep", "--space", str(work / "e2e.yaml"), "--data", str(index), "--trials", "1", "--name", "e2e",
                   cwd=work / "elsewhere")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"emotune: error: a sweep named 'e2e' already exists in {storage}; resume it with "
        f"`emotune sweep --resume e2e --storage ray_results` or choose another --name"]
    assert len(list((storage / "e2e").glob("trial-*"))) == runs_before
