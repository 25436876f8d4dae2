"""A sweep on a busy machine loses no trial and does not hang (issue item 5).

Inline trials reuse their Tune trial process: after ASHA stops a trial, the next trial takes over its process, and
Ray's ``FunctionTrainable.reset_config`` waits only ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s) for the stopped trial's
training thread. On a loaded machine the thread took longer; Tune then errored the next trial ("Trainable runner reuse
requires reset_config() to be implemented and return True"), without an MLflow run, without telling the searcher, whose
concurrency slot stayed taken -- and the sweep sat idle for good. This test runs such a sweep through the real CLI with
two CPU-hogging processes beside it. Marked slow.

The hogs run in the test's own session, as the test suite and a `data prepare` did beside the failing sweep: Ray starts
its worker processes (the trials) at nice 15, so busy nice-0 processes of the same session (one scheduler autogroup)
leave a trial thread little CPU, and unwinding it after a stop (mostly the loop's ``gc.collect()``, ~0.25 s of CPU)
took well over 2 s. Hogs in another session would compete as a group and barely slow the trials.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import end, start_sweep
from tests.test_sweep_e2e import emotune

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("emotune"))
TRIALS = 8
MAX_EPOCHS = 4
# A sweep of 8 short trials takes 2-5 minutes beside two CPU hogs on 2 cores; a lost trial used to leave it idle
# forever (a 600 s wait per retry of Tune's trial queue), so this bound tells a slow sweep from a hung one.
SWEEP_TIMEOUT_S = 900

SPACE = f"""
name: load
objective: {{metric: val_ccc_mean, mode: max}}
fidelity: {{attr: epoch, max: {MAX_EPOCHS}, grace: 1, reduction_factor: 2}}
resources: {{workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}}
fixed: {{backbone: cnn_rnn_tiny, window_length: 16, clip_len: 16, label_fusion: mean, batch_size: 8, seed: 0,
        rnn_hidden: 8, window_overlap: 0.5, ssts_stride: 4, postprocess: false}}
params:
  lr: {{type: loguniform, low: 1.0e-4, high: 3.0e-3}}
  w_mse: {{type: uniform, low: 0.0, high: 1.0}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 subjects (2 train, 1 val, 1 test), one short video each, prepared through the CLI."""
    work = tmp_path_factory.mktemp("load-data")
    emotune("data", "synth", "--out", "data", "--subjects", "4", "--videos-per-subject", "1", "--frames", "64",
            "--size", "64", cwd=work)
    prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache", "--size", "32", cwd=work)
    return (work / prep.stdout.split("dataset index: ")[1].strip()).resolve()


def _cpu_hogs(n: int = 2) -> list[subprocess.Popen]:
    """``n`` busy-looping processes in this session (see the module docstring)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def experiment_trials(folder: Path) -> dict[str, dict]:
    """trial id -> Tune's record of the trial (``status``, ``config``, ...), from the experiment state Tune wrote
    last."""
    state = max(folder.glob("experiment_state-*.json"))  # the newest by its name's time stamp, as Tune chooses
    trials = {}
    for trial_json, _run_metadata in json.loads(state.read_text())["trial_data"]:
        trial = json.loads(trial_json)
        trials[trial["trial_id"]] = trial
    return trials


@pytest.mark.timeout(SWEEP_TIMEOUT_S + 300)
def test_sweep_beside_cpu_hogs_finishes_every_trial(data, tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "load.yaml").write_text(SPACE)
    hogs = _cpu_hogs()
    t0 = time.monotonic()
    proc = start_sweep(["sweep", "--space", "load.yaml", "--data", str(data), "--trials", str(TRIALS), "--name", "load",
                        "--seed", "3"], cwd=tmp_path)
    try:
        out = proc.communicate(timeout=SWEEP_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"the sweep hung: not finished after {SWEEP_TIMEOUT_S} s\n{out[-4000:]}")
    finally:
        wall = time.monotonic() - t0
        for hog in hogs:
            hog.kill()
            hog.wait()
        end(proc)  # the sweep and its local Ray, if it hung
    print(f"\nsweep wall time beside 2 CPU hogs: {wall:.0f} s")
    assert proc.returncode == 0, out[-4000:]

    results = tmp_path / "ray_results" / "load"
    statuses = {trial_id: t["status"] for trial_id, t in experiment_trials(results).items()}
    errors = sorted(p.parent.name for p in results.glob("trial-*/error.txt"))
    assert len(statuses) == TRIALS, statuses
    assert set(statuses.values()) == {"TERMINATED"} and not errors, f"errored trials: {statuses} {errors}\n{out[-3000:]}"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["emotune.trial_id"] for c in children) == sorted(statuses)
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags
        epochs = int(child.data.tags["emotune.epochs_run"])
        assert 1 <= epochs <= MAX_EPOCHS
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ccc_mean")]
        assert steps == list(range(1, epochs + 1))
    stopped = [c for c in children if c.data.tags["emotune.stopped_early"] == "true"]
    print(f"trials: {len(children) - len(stopped)} complete, {len(stopped)} stopped early by ASHA; "
          f"MLflow child runs: {len(children)}")
    # The case under test happened: ASHA stopped trials mid-sweep and later trials reused trial processes.
    assert stopped, "ASHA stopped no trial: the sweep did not exercise the reuse of a stopped trial's process"
    pids = {json.loads(line)["pid"] for p in results.glob("trial-*/result.json") for line in p.open()}
    assert len(pids) < TRIALS, "no trial process was reused"
