"""Failures during sweeps, with the real components: a worker process killed mid-trial, the driver killed mid-sweep
(then `--resume`), and a configuration whose loss turns NaN. Marked slow: each runs real sweeps."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import end, start_sweep, trial_worker_pid
from tests.processes import wait_for_line as _wait_for
from tests.test_sweep_e2e import emotune, synth_and_prepare

pytestmark = pytest.mark.slow

SPACE = """
name: ft
objective: {{metric: val_ccc_mean, mode: max}}
fidelity: {{attr: epoch, max: {epochs}, grace: {epochs}, reduction_factor: 2}}
fixed: {{backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, batch_size: 8, seed: 0,
        rnn_hidden: 16, window_overlap: 0.5, ssts_stride: 4, postprocess: false}}
params:
  lr: {{type: categorical, choices: [0.001, 0.002, 0.003, 1.0e+30]}}
{extra}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_and_prepare(tmp_path_factory.mktemp("ft"), frames=150)[0]


def _runs(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a sweep's driver and the local Ray it started (its process group, see tests.processes), as a crash
    of the machine would."""
    end(proc)


EPOCHS = 12


@pytest.mark.parametrize("executor", ["inline", "train"])
def test_worker_killed_mid_trial_resumes_from_checkpoint(data, tmp_path, executor):
    # Dense windows and a dozen epochs (about half a second each): the kill lands while the trial still trains.
    (tmp_path / "ft.yaml").write_text(SPACE.format(epochs=EPOCHS, extra="initial_points: [{lr: 0.002}]").replace(
        "window_overlap: 0.5", "window_overlap: 0.9"))
    proc = start_sweep(["sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "1", "--name", "w",
                        "--executor", executor], cwd=tmp_path)
    try:
        _wait_for(proc, rf"epoch 1/{EPOCHS}")
        # The process that trains this trial, as the trial reports it: the Tune trial process (inline) or its Ray
        # Train worker, and no other process on the machine.
        trial_dir = next((tmp_path / "ray_results" / "w").glob("trial-*"))
        pid = trial_worker_pid(trial_dir)
        os.kill(pid, signal.SIGKILL)
        rest = proc.communicate(timeout=900)[0]
    finally:
        end(proc)
    assert proc.returncode == 0, rest[-3000:]
    client, parents, children = _runs(tmp_path / "mlflow.db")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_ccc_mean")]
    assert set(steps) == set(range(1, EPOCHS + 1)) and steps.count(1) == 1  # resumed from a checkpoint
    assert children[0].data.tags["emotune.epochs_run"] == str(EPOCHS)
    import json

    reports = [json.loads(line) for line in (trial_dir / "result.json").open()]
    assert pid in {r["worker_pid"] for r in reports} and len({r["worker_pid"] for r in reports}) == 2
    # Inline, the killed process was the trial's own: a new one finished it. With Ray Train, Train replaced its worker
    # under the same trial process.
    assert len({r["pid"] for r in reports}) == (2 if executor == "inline" else 1)


def test_driver_killed_then_resume_completes_every_trial_once(data, tmp_path):
    # Four distinct configurations (lr pinned below, dropout searched): a sweep trains each configuration once.
    (tmp_path / "ft.yaml").write_text(SPACE.format(epochs=2, extra="").replace(
        "params:\n", "params:\n  dropout: {type: categorical, choices: [0.0, 0.1, 0.2, 0.3]}\n"))
    proc = start_sweep(["sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "4", "--name", "d",
                        "--max-concurrent", "1", "--set", "lr=0.002"], cwd=tmp_path)
    try:
        _wait_for(proc, r"1 done")
        _wait_for(proc, r"trial \w+ started")
        time.sleep(5)
    finally:
        _kill_driver(proc)
    resumed = emotune("sweep", "--resume", "d", cwd=tmp_path, timeout=900)
    assert "Leaderboard of sweep d" in resumed.stdout
    client, parents, children = _runs(tmp_path / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = sorted(c.data.tags["emotune.trial_id"] for c in children)
    assert len(trial_ids) == 4 and len(set(trial_ids)) == 4  # exactly the requested trials, no duplicate run
    assert all(c.info.status == "FINISHED" for c in children)
    import optuna

    study = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4


def test_nan_loss_stops_that_trial_and_the_sweep_goes_on(data, tmp_path):
    (tmp_path / "ft.yaml").write_text(SPACE.format(epochs=2, extra="initial_points: [{lr: 1.0e+30}, {lr: 0.002}]"))
    out = emotune("sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "2", "--name", "n",
                  "--max-concurrent", "1", cwd=tmp_path).stdout
    assert "Leaderboard of sweep n" in out
    client, parents, children = _runs(tmp_path / "mlflow.db")
    by_lr = {float(c.data.params["lr"]): c for c in children}
    assert by_lr[1e30].data.tags.get("emotune.diverged") == "true"
    assert by_lr[1e30].data.metrics["val_ccc_mean"] == -1.0
    assert "emotune.diverged" not in by_lr[0.002].data.tags
    assert by_lr[0.002].data.metrics["val_ccc_mean"] > -1.0
