"""Failures during sweeps, with the real components: a worker process killed mid-trial, the driver killed mid-sweep
(then `--resume`), and a configuration whose loss turns NaN. Marked slow: each runs real sweeps."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_sweep_e2e import emotune, synth_and_prepare

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("emotune"))

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


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 600) -> str:
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"{pattern!r} never appeared:\n{''.join(seen)[-3000:]}")


def _kill_local_ray(port: int) -> None:
    """Stop the local Ray a killed driver left behind: its GCS and raylet carry the GCS port the test chose."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if f":{port}" in args or f"={port}" in args:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def _kill_driver(proc: subprocess.Popen, port: int) -> None:
    """SIGKILL a sweep's driver (if it still runs), as a crash would, then stop the local Ray it left behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    _kill_local_ray(port)


# The process that trains: the Tune trial itself (inline executor), or the Ray Train worker (train executor).
TRAINING_PROCESS = {"inline": "ray::ImplicitFunc", "train": "ray::RayTrainWorker"}


@pytest.mark.parametrize("executor", ["inline", "train"])
def test_worker_killed_mid_trial_resumes_from_checkpoint(data, tmp_path, executor):
    (tmp_path / "ft.yaml").write_text(SPACE.format(epochs=4, extra="initial_points: [{lr: 0.002}]"))
    proc = subprocess.Popen([EXE, "sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "1", "--name", "w",
                             "--executor", executor],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(proc, r"epoch 1/4")
        workers = subprocess.run(["pgrep", "-f", TRAINING_PROCESS[executor]], capture_output=True,
                                 text=True).stdout.split()
        assert workers, f"no {TRAINING_PROCESS[executor]} process to kill"
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        rest = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-3000:]
    client, parents, children = _runs(tmp_path / "mlflow.db")
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "val_ccc_mean")]
    assert set(steps) == {1, 2, 3, 4} and steps.count(1) == 1  # resumed from a checkpoint, not from scratch
    assert children[0].data.tags["emotune.epochs_run"] == "4"
    import json

    reports = [json.loads(line) for line in next((tmp_path / "ray_results" / "w").glob("trial-*/result.json")).open()]
    # Inline, the killed process was the trial's own: a new one finished it. With Ray Train, Train replaced its worker
    # under the same trial process.
    assert len({r["pid"] for r in reports}) == (2 if executor == "inline" else 1)


def test_driver_killed_then_resume_completes_every_trial_once(data, tmp_path):
    # Four distinct configurations (lr pinned below, dropout searched): a sweep trains each configuration once.
    (tmp_path / "ft.yaml").write_text(SPACE.format(epochs=2, extra="").replace(
        "params:\n", "params:\n  dropout: {type: categorical, choices: [0.0, 0.1, 0.2, 0.3]}\n"))
    from tests.test_cluster import free_port

    port = free_port()
    proc = subprocess.Popen([EXE, "sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "4", "--name", "d",
                             "--max-concurrent", "1", "--set", "lr=0.002"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_GCS_SERVER_PORT": str(port)})
    try:
        _wait_for(proc, r"1 done")
        _wait_for(proc, r"trial \w+ started")
        time.sleep(5)
    finally:
        _kill_driver(proc, port)
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
