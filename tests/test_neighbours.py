"""emotune on a shared machine (marked slow: real sweeps and real Ray heads): a sweep starts a Ray of its own beside
a user's running cluster and beside a dead one, two sweeps started at once share one new MLflow and Optuna store, and a
sweep whose driver and local Ray are killed again and again, each time just after a trial started, trains every
configuration exactly once when resumed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import BIN, bystander_ray, end, start_sweep, wait_for_line
from tests.test_fault_tolerance import SPACE as FT_SPACE
from tests.test_load import experiment_trials
from tests.test_sweep_e2e import SPACE, emotune, synth_and_prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    work = tmp_path_factory.mktemp("neighbours")
    return synth_and_prepare(work, frames=150)[0]


def _ray_list(kind: str, dashboard: str) -> list[dict]:
    # The head's token is the user's (~/.ray/auth_token, which `ray start` made); the CLI sends it in token mode.
    out = subprocess.run([str(BIN / "ray"), "list", kind, "--address", dashboard, "--format", "json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "token"})
    assert out.returncode == 0, out.stderr[-2000:]
    return [] if out.stdout.startswith("No resource") else json.loads(out.stdout or "[]")


def test_the_demo_runs_on_its_own_ray_beside_a_users_cluster(tmp_path):
    with bystander_ray() as (head, _gcs, dashboard):
        jobs_before = _ray_list("jobs", dashboard)
        out = emotune("demo", cwd=tmp_path, timeout=900).stdout
        assert head.poll() is None  # the user's cluster still runs
        assert _ray_list("jobs", dashboard) == jobs_before  # no driver of the demo connected to it
        assert _ray_list("actors", dashboard) == []  # and no trial ran there
    assert "Trials:        " in out
    log = (tmp_path / "emotune-demo" / "emotune.log").read_text()
    assert "Started a local Ray instance" in log and "Connecting to existing Ray cluster" not in log


def test_a_dead_cluster_does_not_hold_up_a_sweep(data, tmp_path):
    from ray._common.utils import get_ray_address_file

    (tmp_path / "e2e.yaml").write_text(SPACE)
    with bystander_ray() as (head, gcs, _dashboard):
        end(head)  # killed, never shut down: Ray's temp folder still names it as the latest cluster
        assert Path(get_ray_address_file(None)).read_text().strip() == gcs
        started = time.time()
        proc = start_sweep(["sweep", "--space", "e2e.yaml", "--data", str(data), "--trials", "1", "--name", "after",
                            "--max-concurrent", "1"], cwd=tmp_path)
        try:
            wait_for_line(proc, r"trial \w+ started", timeout=120)
            first_trial_s = time.time() - started
            out = proc.communicate(timeout=600)[0]
        finally:
            end(proc)
    print(f"first trial started {first_trial_s:.1f} s after the command")
    assert proc.returncode == 0, out[-3000:]
    assert first_trial_s < 60  # its own Ray at once (a wait for the dead cluster lasted minutes)
    assert "Failed to get cluster ID" not in (tmp_path / "ray_results" / "after" / "emotune.log").read_text()


def _children(client, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.mark.parametrize("round_", range(3))
def test_two_sweeps_started_at_once_share_a_new_store(data, tmp_path, round_):
    import optuna
    from mlflow.tracking import MlflowClient

    (tmp_path / "e2e.yaml").write_text(SPACE)
    stores = ["--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    procs = [start_sweep(["sweep", "--space", "e2e.yaml", "--data", str(data), "--trials", "2", "--name", name,
                          "--max-concurrent", "1", "--seed", str(round_), *stores], cwd=tmp_path)
             for name in ("first", "second")]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            end(p)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    parents = {r.data.tags["emotune.sweep"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == ["first", "second"]
    for name, parent in parents.items():
        assert parent.info.status == "FINISHED"
        assert len(_children(client, parent.info.run_id)) == 2
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert len([t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]) == 2


def test_a_sweep_killed_three_times_just_after_a_trial_started_trains_every_configuration_once(data, tmp_path):
    """Kill the driver and its local Ray (their process group) 0.2, 0.5 and 0.9 s after a trial started, resuming in
    between, then let the last resume finish: Tune's trials, the MLflow child runs and Optuna's trials (closed
    repeats and trials lost with a driver aside) are the same six configurations, each once."""
    import optuna
    from mlflow.tracking import MlflowClient

    from cluster.searcher import LOST_ATTR, REPEAT_ATTR

    (tmp_path / "ft.yaml").write_text(FT_SPACE.format(epochs=2, extra="").replace(
        "params:\n", "params:\n  dropout: {type: categorical, choices: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}\n"))
    first = ["sweep", "--space", "ft.yaml", "--data", str(data), "--trials", "6", "--name", "k", "--max-concurrent",
             "1", "--set", "lr=0.002"]
    resume = ["sweep", "--resume", "k"]
    kills, started = [], set()
    for attempt, delay in enumerate((0.2, 0.5, 0.9)):
        proc = start_sweep(first if attempt == 0 else resume, cwd=tmp_path)
        try:
            # A trial new to this sweep (a resumed run first restarts the trials it had running).
            while True:
                line = wait_for_line(proc, r"trial \w+ started", timeout=600).strip().splitlines()[-1]
                trial = re.search(r"trial (\w+) started", line).group(1)
                if trial not in started:
                    break
            time.sleep(delay)
            started.add(trial)
            kills.append(line)
        finally:
            end(proc)
    done = emotune(*resume, cwd=tmp_path, timeout=1200)
    assert "Leaderboard of sweep k" in done.stdout

    trials = experiment_trials(tmp_path / "ray_results" / "k")
    assert len(trials) == 6 and all(t["status"] == "TERMINATED" for t in trials.values()), trials
    tune_dropouts = sorted(float(t["config"]["dropout"]) for t in trials.values())
    assert tune_dropouts == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # every configuration, once

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags)
    children = _children(client, parent.info.run_id)
    assert sorted(c.data.tags["emotune.trial_id"] for c in children) == sorted(trials)
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(float(c.data.params["dropout"]) for c in children) == tune_dropouts

    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    lost = set(study.user_attrs.get(LOST_ATTR, []))
    trained = [t for t in study.trials if REPEAT_ATTR not in t.user_attrs and t.number not in lost]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trained), [(t.number, t.state) for t in trained]
    assert sorted(t.params["dropout"] for t in trained) == tune_dropouts
    log = (tmp_path / "ray_results" / "k" / "emotune.log").read_text()
    assert "snapshotting has been triggered multiple times" not in log
    for trial in trials:  # superseded checkpoints are removed: the latest and the 2 best remain at most
        assert len(list((tmp_path / "ray_results" / "k" / f"trial-{trial}").glob("checkpoint_*"))) <= 3
    assert all(t.state.name == "FAIL" for t in study.trials if LOST_ATTR in t.user_attrs)
    print("killed after:", kills, "; Optuna trials lost with a driver:", sorted(lost))
