"""The MLflow trial callback's bookkeeping of each trial's best result and checkpoint, against a real MLflow store and
real Tune checkpoints; the trial is the small part of Tune's Trial the callback reads."""
from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.tracking import MlflowTrialCallback, open_experiment


@pytest.fixture
def callback(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_experiment(uri, "t", artifact_root=tmp_path / "artifacts")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    return MlflowTrialCallback(uri, experiment_id, parent, max_steps=4)


def _trial(trial_id="t1"):
    return SimpleNamespace(trial_id=trial_id, config={"lr": 0.001, "runtime": {}}, last_result=None)


def _result(cb, trial, epoch, value, tmp_path=None, **extra):
    """Report one epoch as Tune does: callbacks see the result, the trial keeps it, then (inline) the checkpoint."""
    from ray.tune import Checkpoint

    result = {"epoch": epoch, "training_iteration": epoch, "time_total_s": 10.0 * epoch + 0.5 * len(extra),
              "val_ccc_mean": value, **extra}
    cb.on_trial_result(0, [], trial, result)
    trial.last_result = result
    if tmp_path is not None:
        folder = tmp_path / f"ckpt-{epoch}-{len(extra)}"
        folder.mkdir()
        (folder / "epoch.txt").write_text(str(epoch))
        cb.on_checkpoint(0, [], trial, Checkpoint.from_directory(str(folder)))
        return str(folder)


def test_best_checkpoint_is_the_later_of_equal_scores_and_never_a_diverged_report(callback, tmp_path):
    trial = _trial()
    callback.on_trial_start(0, [], trial)
    _result(callback, trial, 1, 0.5, tmp_path)
    second = _result(callback, trial, 2, 0.5, tmp_path)  # a tie: Ray's retention keeps the later one
    _result(callback, trial, 3, 0.3, tmp_path)
    _result(callback, trial, 4, -1.0, diverged=1)
    assert callback.best["t1"] == (0.5, second)
    callback.on_trial_complete(0, [], trial)
    run = callback.client.get_run(callback.run_id("t1"))
    assert run.data.metrics["best_val_ccc_mean"] == 0.5
    assert run.data.tags["emotune.best_checkpoint"] == second
    local = callback.client.download_artifacts(run.info.run_id, "checkpoint/epoch.txt", str(tmp_path))
    assert Path(local).read_text() == "2"


def test_a_checkpoint_from_a_retry_is_not_filed_under_the_best_the_dead_process_reported(callback, tmp_path):
    trial = _trial()
    callback.on_trial_start(0, [], trial)
    first = _result(callback, trial, 1, 0.4, tmp_path)
    _result(callback, trial, 2, 0.9)  # the process died before this result's checkpoint was saved
    # The retry resumes from epoch 1 and reports epoch 2 again, worse this time, with its checkpoint.
    _result(callback, trial, 2, 0.6, tmp_path, retried=1)
    assert callback.best["t1"] == (0.9, None)  # no checkpoint holds the 0.9 weights
    assert first != callback.best["t1"][1]


def test_state_survives_a_resumed_driver_and_an_older_pickle(callback, tmp_path):
    trial = _trial()
    callback.on_trial_start(0, [], trial)
    path = _result(callback, trial, 1, 0.7, tmp_path)
    restored = pickle.loads(pickle.dumps(callback))  # what --resume unpickles: the callback as the sweep began
    restored.runs, restored.best, restored.awaiting_checkpoint = {}, {}, {}
    restored.set_state(callback.get_state())  # Tune restores the saved state into it
    assert restored.best["t1"] == (0.7, path) and restored.run_id("t1") == callback.run_id("t1")
    old = callback.__getstate__()
    del old["awaiting_checkpoint"]  # a sweep started before inline trials existed
    legacy = MlflowTrialCallback.__new__(MlflowTrialCallback)
    legacy.__setstate__(old)
    _result(legacy, trial, 2, 0.8, tmp_path)
    assert legacy.best["t1"][0] == 0.8


def test_runs_carry_tunes_times_and_a_snapshot_waits_for_the_records(callback, tmp_path):
    """The writes run in the background: a run's start and end are the moments Tune started and ended the trial, not
    when the writes happened, and once Tune has taken the callback's state for a snapshot the store holds everything
    (read here through a client of its own, which waits for nothing)."""
    import time

    from mlflow.tracking import MlflowClient

    trial = _trial()
    started = time.time()
    callback.on_trial_start(0, [], trial)
    _result(callback, trial, 1, 0.6, tmp_path)
    callback._write(time.sleep, 2.0)  # the store is slow right now: the writes queue behind this one
    ended = time.time()
    callback.on_trial_complete(0, [], trial)
    assert time.time() - ended < 1.0  # Tune's loop did not wait for the store (2 s); room for a busy machine
    state = callback.get_state()
    other = MlflowClient(callback.tracking_uri)
    [run] = other.search_runs([callback.experiment_id], filter_string="tags.`emotune.trial_id` = 't1'")
    assert state["runs"] == {"t1": run.info.run_id}
    assert run.info.status == "FINISHED" and run.data.tags["emotune.epochs_run"] == "1"
    assert run.data.metrics["best_val_ccc_mean"] == 0.6 and run.data.metrics["val_ccc_mean"] == 0.6
    assert abs(run.info.start_time / 1000 - started) < 0.5
    assert abs(run.info.end_time / 1000 - ended) < 1.0  # not the write's time, 2 s later or more
