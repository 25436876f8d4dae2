"""How Tune ends, retries and reuses trial processes, with real Ray Tune runs of tiny trial functions in this process:

* the retry policy (``cluster.retries``): a trial that raises a ``ConfigError`` is errored at once, a trial with a bug
  is retried ``max_failures`` times, a trial whose process is killed is retried from its last checkpoint;
* the reuse of a stopped trial's process (``trainables.trial.ReusableTrial``): a training thread that takes longer than
  Ray's 2 s to end no longer costs the next trial, and one that does not end at all sends the next trial to a new
  process instead of erroring it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

REUSE_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray whose worker processes wait ``REUSE_TIMEOUT_S`` for a previous trial's thread."""
    ray.shutdown()  # none of the other tests keeps a Ray in this process; make sure of it
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"EMOTUNE_REUSE_TIMEOUT_S": str(REUSE_TIMEOUT_S)}})
    yield
    ray.shutdown()


def _attempts(folder: Path, name: str) -> list[int]:
    """The process ids of a trial's attempts, one line per start."""
    path = folder / f"{name}.attempts"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_user_error_is_not_retried_crashes_are(local_ray, tmp_path):
    from ray import tune

    from cluster.retries import install_retry_policy

    def trial(config):
        import json
        import signal
        import tempfile

        from ray import tune as rt

        from trainables.errors import ConfigError

        folder, kind = Path(config["folder"]), config["kind"]
        with (folder / f"{kind}.attempts").open("a") as f:
            f.write(f"{os.getpid()}\n")
        if kind == "config_error":
            raise ConfigError("lr=-1.0 is not allowed; allowed: a number in (0, 10]")
        if kind == "bug":
            raise RuntimeError("a bug: retrying might help")
        start = 0
        if rt.get_checkpoint() is not None:
            with rt.get_checkpoint().as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["step"]
        for step in range(start + 1, 4):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"step": step}))
                rt.report({"step": step, "resumed_from": start}, checkpoint=rt.Checkpoint.from_directory(d))
            if step == 2 and start == 0:
                os.kill(os.getpid(), signal.SIGKILL)  # the trial process dies after its second checkpoint

    install_retry_policy()
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 1}),
        param_space={"folder": str(tmp_path), "kind": tune.grid_search(["config_error", "bug", "killed"])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    results = {r.config["kind"]: r for r in tuner.fit()}

    assert len(_attempts(tmp_path, "config_error")) == 1  # not retried
    assert "ConfigError" in str(results["config_error"].error)
    assert len(_attempts(tmp_path, "bug")) == 3  # the first run and max_failures=2 retries
    assert "RuntimeError" in str(results["bug"].error)
    killed = results["killed"]
    assert killed.error is None and killed.metrics["step"] == 3
    assert killed.metrics["resumed_from"] == 2  # the retry resumed from the checkpoint of step 2
    assert len(set(_attempts(tmp_path, "killed"))) == 2


def test_config_error_inside_run_trial_is_not_retried(local_ray, tmp_path):
    """The sweep's own trainable, as ``run_sweep`` builds it: the typed trial config refuses ``lr=-1`` inside the
    trial (``fit``), and with ``max_failures=2`` the trial still fails once, not three times."""
    from ray import tune

    from cluster.retries import install_retry_policy
    from trainables.trial import run_trial, trial_resources

    install_retry_policy()
    runtime = {"executor": "inline", "workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "max_failures": 2,
               "storage_path": str(tmp_path / "results" / "c"), "metric": "val_ccc_mean", "mode": "max"}
    tuner = tune.Tuner(
        tune.with_resources(run_trial, trial_resources),
        param_space={"backbone": "cnn_rnn_tiny", "lr": -1.0, "batch_size": 8, "epochs": 1,
                     "data_index": str(tmp_path / "index.json"), "runtime": runtime},
        run_config=tune.RunConfig(name="c", storage_path=str(tmp_path / "results"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    [result] = list(tuner.fit())
    assert "ConfigError" in str(result.error) and "lr=-1.0" in str(result.error)
    failures = (Path(result.path) / "error.txt").read_text().count("Failure #")
    assert failures == 1  # Tune appends one "Failure # n" entry per failed attempt


def _reuse_sweep(tmp_path: Path, linger_s: list[float], max_failures: int = 0):
    """One trial at a time (each takes both CPUs), each stopped after its first report, the next one reusing the
    process (with ``run_trial``'s mixin). When stopped inside ``report`` (Ray raises SystemExit there), trial i's thread takes ``linger_s[i]`` seconds
    to end, as a thread cleaning up on a busy machine does."""
    from ray import tune

    from trainables.trial import ReusableTrial

    def linger_on_stop(config):
        import time

        from ray import tune as rt

        with open(Path(config["folder"]) / f"{config['trial']['name']}.attempts", "a") as f:
            f.write(f"{os.getpid()}\n")
        for step in range(1, 1000):
            try:
                rt.report({"step": step})
            except SystemExit:
                time.sleep(config["trial"]["linger_s"])
                raise

    linger_on_stop.__mixins__ = (ReusableTrial,)
    trials = [{"name": f"t{i}", "linger_s": s} for i, s in enumerate(linger_s)]
    tuner = tune.Tuner(
        tune.with_resources(linger_on_stop, {"cpu": 2}),
        param_space={"folder": str(tmp_path), "trial": tune.grid_search(trials)},
        # no max_concurrent_trials: a lost trial would hold its searcher slot and hang the run instead of failing it
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), verbose=0, stop={"training_iteration": 1},
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return {r.config["trial"]["name"]: r for r in tuner.fit()}


def test_reused_process_waits_for_a_slow_to_end_thread(local_ray, tmp_path):
    """Each stopped trial's thread needs 4 s to end (Ray's reset gives it 2 s and then errors the next trial, whose
    searcher slot is never freed -- the lost trial and the hang of issue item 5); every trial runs, in one process."""
    results = _reuse_sweep(tmp_path, [4.0, 4.0, 0.0])
    assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
    assert sorted(results) == ["t0", "t1", "t2"]
    pids = [pid for name in results for pid in _attempts(tmp_path, name)]
    assert len(pids) == 3 and len(set(pids)) == 1  # one attempt each, all in the reused process


def test_thread_that_does_not_end_sends_the_next_trial_to_a_new_process(local_ray, tmp_path):
    """t0's thread does not end within EMOTUNE_REUSE_TIMEOUT_S: t1 is restarted in a new process (one failure), not
    errored."""
    results = _reuse_sweep(tmp_path, [60.0, 0.0], max_failures=1)
    assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
    t0, t1 = _attempts(tmp_path, "t0"), _attempts(tmp_path, "t1")
    assert len(t0) == 1 and len(t1) == 1 and t1 != t0  # t1 never trained in t0's process
    errors = [p.read_text() for p in (tmp_path / "results").rglob("error.txt")]
    assert len(errors) == 1 and "ProcessStillBusy" in errors[0]


def test_an_inline_trial_trains_on_while_the_driver_handles_its_report(local_ray, tmp_path):
    """``TuneTrialSession.report`` returns once Tune has taken the report, not after the driver's callbacks ran: with
    a driver that spends 0.6 s on every result (records on a slow store) and 1.5 s of work between reports, no report
    waits for the driver; every report still arrives, in order, each with its own checkpoint."""
    import json
    import time

    from ray import tune

    def trial(config):
        import tempfile

        from trainables.session import TuneTrialSession

        session, waits = TuneTrialSession(), []
        for step in range(1, 4):
            time.sleep(1.5)  # an epoch
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"step": step}))
                started = time.perf_counter()
                session.report({"step": step}, checkpoint_dir=Path(d))
                waits.append(time.perf_counter() - started)
        (Path(config["folder"]) / "waits.json").write_text(json.dumps(waits))

    class SlowRecords(tune.Callback):
        def __init__(self):
            self.steps, self.checkpoints = [], []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.steps.append(result["step"])
            time.sleep(0.6)

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            with checkpoint.as_directory() as d:
                self.checkpoints.append(json.loads((Path(d) / "state.json").read_text())["step"])

    records = SlowRecords()
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}), param_space={"folder": str(tmp_path)},
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "results"), verbose=0,
                                                 callbacks=[records]))
    [result] = list(tuner.fit())
    assert result.error is None
    assert records.steps == [1, 2, 3] and records.checkpoints == [1, 2, 3]
    waits = json.loads((tmp_path / "waits.json").read_text())
    assert max(waits) < 0.45, waits  # a report waiting for the driver would take 0.6 s or more


def test_user_errors_are_recognised_through_ray_wrappers():
    """In the trial, ``run_trial`` finds a user error behind what it caught (a chained cause, a Ray Train worker's
    error inside the WorkerGroupError that ``TorchTrainer.fit`` raises) and raises it as itself; in the driver, Tune
    hands the retry policy a RayTaskError whose ``cause`` is what the trial raised."""
    import pickle

    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from cluster.retries import is_user_error
    from trainables.errors import ConfigError, DataError
    from trainables.trial import find_user_error

    def task_error(exc):  # as the driver receives it: pickled across processes
        return pickle.loads(pickle.dumps(RayTaskError("train", "Traceback ...", exc)))

    assert is_user_error(task_error(ConfigError("lr=-1 is not allowed")))
    assert is_user_error(task_error(DataError("no such cache entry")))
    assert not is_user_error(task_error(RuntimeError("a bug")))
    assert not is_user_error(None)

    # an error raised "from" a user error stands for it; one raised while handling one (a bug in the handler) does not
    try:
        raise RuntimeError("could not build the model") from ConfigError("bad key")
    except RuntimeError as err:
        assert isinstance(find_user_error(err), ConfigError)
    try:
        try:
            raise ConfigError("bad key")
        except ConfigError:
            raise RuntimeError("a bug while reporting it")
    except RuntimeError as err:
        assert find_user_error(err) is None

    group = pickle.loads(pickle.dumps(WorkerGroupError("worker 0 failed", {
        0: UserExceptionWithTraceback(ConfigError("bad key"), "Traceback ..."), 1: RuntimeError("collective aborted")})))
    found = find_user_error(group)
    assert isinstance(found, ConfigError) and str(found) == "bad key"
    assert find_user_error(WorkerGroupError("crash", {0: RuntimeError("killed")})) is None


def test_a_trial_process_freezes_what_it_imported_once_and_still_collects_each_trials_garbage(monkeypatch):
    """``freeze_imports`` sets the objects alive at a process's first trial aside from the garbage collector (what a
    reused process's collection after each trial no longer walks), once: a later trial freezes nothing more, and its
    own cyclic garbage is still collected."""
    import gc
    import weakref

    from trainables import trial

    class Node:
        pass

    monkeypatch.setattr(trial, "_IMPORTS_FROZEN", False)
    before = gc.get_freeze_count()
    try:
        imported = Node()
        imported.ref = imported
        trial.freeze_imports()
        frozen = gc.get_freeze_count()
        assert frozen > before
        leftover = Node()
        leftover.ref = leftover
        gone = weakref.ref(leftover)
        del leftover
        trial.freeze_imports()
        assert gc.get_freeze_count() == frozen
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
