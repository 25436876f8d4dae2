"""MLflow records of a sweep: one parent run per sweep, one child run per trial.

Everything is written from the Tune driver process (a Tune callback), so trials need no access to the tracking store
and a local SQLite store works unchanged when trials run on other nodes.

The writes themselves run on one background thread of the driver, in the order the callbacks made them: each one is a
database transaction (a SQLite commit, or a request to a tracking server), and made inline they held up Tune's loop
between one trial's end and the next trial's start (the final result, the end record with the best checkpoint's
upload, the next run's creation: about 0.4 s per trial on a busy 2-core machine). Runs carry the times Tune started
and ended their trials, not the times the writes happened. Before Tune snapshots the experiment (what ``--resume``
reads) and when the sweep ends, the callback waits for every write made so far, so a snapshot never names a trial
whose records are still pending; a write that fails raises there, in the driver.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray.tune import Callback

from trainables.reports import COST_KEYS
from trainables.provenance import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from trainables.storage import is_local, storage_uri

SKIP_CONFIG_KEYS = ("runtime",)


def trial_params(config: dict) -> dict[str, Any]:
    """The params a trial's run records: its config without runtime plumbing."""
    return {k: v for k, v in config.items() if k not in SKIP_CONFIG_KEYS}


def _result_key(result: dict) -> tuple:
    return result.get("training_iteration"), result.get("time_total_s")


def open_experiment(tracking_uri: str, name: str, artifact_root: str | Path | None = None):
    """(client, experiment_id) for ``name``, created if absent; local stores keep artifacts in ``artifact_root``."""
    from mlflow.tracking import MlflowClient

    from cluster.stores import first_connection

    # Another sweep may be creating the same store or experiment right now (cluster.stores); the client opens (and
    # creates) the store when it is made.
    with first_connection(tracking_uri):
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return client, exp.experiment_id
        location = None
        if artifact_root is not None and not tracking_uri.startswith(("http://", "https://", "databricks")):
            location = Path(artifact_root).resolve().as_uri()
        return client, client.create_experiment(name, artifact_location=location,
                                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})



class MlflowTrialCallback(Callback):
    """Child run per trial under ``parent_run_id``: params and resolved config at start, metrics per epoch
    (step = epoch), the final status at the end. A trial that already has a run (a resumed sweep) reuses it.

    A cross-validated sweep (``folds``: the validation subjects of each fold) has three levels: sweep -> trial ->
    one run per fold (tags ``emotune.fold`` and ``emotune.fold_subjects``) holding that fold's curves (``val_*`` per
    fold epoch, as a one-split trial's run holds them), its score (``fold_score``) and best epoch; the trial's run
    holds the objective (the mean over the folds so far), ``folds_done`` and, once every fold is done, ``cv_mean``,
    ``cv_sd`` and the pooled ``cv_pooled_val_*``. Only a trial that finished every fold has a best value."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, step_key: str = "epoch",
                 max_steps: int | None = None, metric: str = "val_ccc_mean", mode: str = "max",
                 folds: tuple = ()):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.step_key, self.max_steps, self.metric, self.mode = step_key, max_steps, metric, mode
        self.folds = tuple(tuple(f) for f in folds)
        self.runs: dict[str, str] = {}
        self.fold_runs: dict[str, str] = {}  # "<trial id>/<fold>" -> its run
        self.best: dict[str, tuple[float, str | None]] = {}  # trial id -> (best objective, its checkpoint path)
        # trial id -> (training_iteration, time_total_s) of its best result, whose checkpoint Tune has not saved yet
        # (inline trials); the pair tells that result from the same iteration run again after a retry
        self.awaiting_checkpoint: dict[str, tuple] = {}
        self.nodes: dict[str, str] = {}  # trial id -> node of its latest report
        self.node_history: dict[str, list[str]] = {}  # trial id -> every node it reported from, in order
        self.restored = False  # set when Tune restores this state (--resume): lost runs are dropped at the next step
        self._client = None
        self._writer: ThreadPoolExecutor | None = None  # the background thread that writes to MLflow
        self._pending: list[Future] = []

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state (for --resume); a live client does not travel.
        state = self.__dict__.copy()
        state["_client"], state["_writer"], state["_pending"] = None, None, []
        return state

    def __setstate__(self, state):
        state.setdefault("awaiting_checkpoint", {})  # a sweep pickled before inline trials existed
        state.setdefault("nodes", {})
        state.setdefault("node_history", {})
        state.setdefault("restored", False)
        state.setdefault("_writer", None)
        state.setdefault("_pending", [])
        state.setdefault("folds", ())
        state.setdefault("fold_runs", {})
        self.__dict__.update(state)

    def _write(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the writer thread, after every write made before it."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="emotune-mlflow")
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()  # a failed write raises here, in the driver
        self._pending.append(self._writer.submit(fn, *args))

    def flush(self) -> None:
        """Wait for every write made so far (raises the first that failed)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def on_experiment_end(self, trials, **info):
        self.flush()

    # Tune saves this state with every experiment checkpoint and restores it on --resume (the pickled callback itself
    # is the one from the sweep's start), so each trial's best value and checkpoint survive a dead driver.
    def get_state(self) -> dict:
        self.flush()  # the snapshot and the MLflow store agree (module docstring)
        return {"runs": dict(self.runs), "best": dict(self.best), "awaiting_checkpoint": dict(self.awaiting_checkpoint),
                "nodes": dict(self.nodes), "node_history": {k: list(v) for k, v in self.node_history.items()},
                "fold_runs": dict(self.fold_runs)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.best.update(state.get("best", {}))
        self.awaiting_checkpoint.update(state.get("awaiting_checkpoint", {}))
        self.nodes.update(state.get("nodes", {}))
        self.node_history.update(state.get("node_history", {}))
        self.fold_runs.update(state.get("fold_runs", {}))
        self.restored = True

    def on_step_begin(self, iteration, trials, **info):
        if self.restored:
            self.restored = False
            self.flush()
            self.drop_lost_runs({t.trial_id for t in trials})

    def drop_lost_runs(self, known: set[str]) -> list[str]:
        """Delete the child runs of trials the resumed experiment does not hold, and return their ids.

        A driver killed after a trial started but before Tune's next experiment snapshot leaves an MLflow run for a
        trial the restored sweep never heard of; the searcher trains that configuration again as a new trial
        (``cluster.searcher``). The old run is deleted (MLflow keeps it restorable, tagged
        ``emotune.lost_with_driver``), so the sweep's runs and its trials agree one to one."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=50_000)
        lost = [r for r in runs if r.data.tags.get("emotune.trial_id") not in known]
        for run in lost:
            self.client.set_tag(run.info.run_id, "emotune.lost_with_driver", "true")
            self.client.set_terminated(run.info.run_id, "KILLED")
            self.client.delete_run(run.info.run_id)
            self.runs.pop(run.data.tags.get("emotune.trial_id"), None)
        return [r.info.run_id for r in lost]

    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a trial, once every write made so far is done (None: the trial has none)."""
        self.flush()
        return self._run_id_now(trial_id)

    def _run_id_now(self, trial_id: str) -> str | None:
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.`emotune.trial_id` = '{trial_id}'")
        if found:
            self.runs[trial_id] = found[0].info.run_id
        return self.runs.get(trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write(self._start_run, trial.trial_id, dict(trial.config), _now_ms())

    def _start_run(self, trial_id: str, config: dict, started_ms: int) -> None:
        if self._run_id_now(trial_id):
            return
        run = self.client.create_run(self.experiment_id, run_name=trial_id, start_time=started_ms, tags={
            "mlflow.parentRunId": self.parent_run_id, "emotune.trial_id": trial_id})
        self.runs[trial_id] = run.info.run_id
        params = trial_params(config)
        from mlflow.entities import Param
        self.client.log_batch(run.info.run_id, params=[Param(k, _short(v)) for k, v in sorted(params.items())])
        self.client.log_dict(run.info.run_id, config, "config.json")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric
        tags = {}
        node = result.get("node_id") or result.get("node_ip")
        if node and self.nodes.get(trial.trial_id) != node:
            # Where the trial ran (its latest report): after a node loss the trial resumes elsewhere and the tags move;
            # every node it reported from is kept in emotune.nodes.
            seen = self.nodes.get(trial.trial_id)
            self.nodes[trial.trial_id] = node
            history = self.node_history.setdefault(trial.trial_id, [] if seen is None else [seen])
            history.append(str(node))
            tags = {"emotune.node_id": str(result.get("node_id", "")), "emotune.node_ip": str(result.get("node_ip", "")),
                    "emotune.hostname": str(result.get("hostname", "")), "emotune.nodes": ",".join(history)}
        if result.get("memory_retries"):  # out of accelerator memory: the batch is now taken in micro-batches
            tags["emotune.micro_batch_size"] = str(result.get("micro_batch_size"))
            tags["emotune.memory_retries"] = str(result["memory_retries"])
        step = int(result.get(self.step_key, result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != self.step_key
                   and (k.startswith(("val_", "train_", "cv_")) or k in ("epoch_time_s", "clips_per_s", "folds_done",
                                                                          "fold_best", *COST_KEYS, "micro_batch_size",
                                                                          "memory_retries"))
                   and math.isfinite(float(v))]
        if metrics or tags:
            self._write(self._log, trial.trial_id, metrics, tags)
        if self.folds and "fold" in result:
            self._write(self._log_fold, trial.trial_id, result)
        value = result.get(self.metric)
        # A CV trial has a value (the mean over every fold) only once it finished every fold.
        complete = not self.folds or result.get("folds_done") == len(self.folds)
        if isinstance(value, (int, float)) and math.isfinite(value) and not result.get("diverged") and complete:
            # Ties go to the later result, as in Ray's checkpoint retention (which keeps the later of equal scores).
            better = (lambda a, b: a >= b) if self.mode == "max" else (lambda a, b: a <= b)
            if trial.trial_id not in self.best or better(value, self.best[trial.trial_id][0]):
                # A Ray Train trial names its checkpoint in the result; an inline trial's checkpoint is saved by Tune
                # after this result and arrives in ``on_checkpoint``.
                path = result.get("checkpoint_path")
                self.best[trial.trial_id] = (float(value), path)
                if path is None:
                    self.awaiting_checkpoint[trial.trial_id] = _result_key(result)
                else:
                    self.awaiting_checkpoint.pop(trial.trial_id, None)

    def _log_fold(self, trial_id: str, result: dict) -> None:
        """One fold-epoch of a CV trial into its fold's run (created at the fold's first report); the fold's score
        and end at its last epoch."""
        from mlflow.entities import Metric

        fold, epoch = int(result["fold"]), int(result["fold_epoch"])
        run_id = self._fold_run_now(trial_id, fold)
        if run_id is None:
            return
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k[len("fold_"):], float(v), ts, epoch) for k, v in result.items()
                   if k.startswith("fold_val_") and isinstance(v, (int, float)) and math.isfinite(float(v))]
        metrics += [Metric(k, float(result[k]), ts, epoch) for k in ("train_loss", "epoch_time_s")
                    if isinstance(result.get(k), (int, float)) and math.isfinite(float(result[k]))]
        ended = result.get("folds_done") == fold
        if ended:
            metrics.append(Metric("fold_score", float(result["fold_best"]), ts, 0))
            metrics.append(Metric("best_epoch", float(result.get("fold_best_epoch", 0)), ts, 0))
        self._batch(run_id, metrics, {})
        if ended:
            self.client.set_terminated(run_id, "FINISHED", end_time=ts or None)

    def _fold_run_now(self, trial_id: str, fold: int) -> str | None:
        key = f"{trial_id}/{fold}"
        if key in self.fold_runs:
            return self.fold_runs[key]
        parent = self._run_id_now(trial_id)
        if parent is None:
            return None
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`emotune.fold` = '{fold}'")
        if found:
            self.fold_runs[key] = found[0].info.run_id
            return self.fold_runs[key]
        subjects = self.folds[fold - 1] if fold <= len(self.folds) else ()
        run = self.client.create_run(self.experiment_id, run_name=f"{trial_id}-fold{fold}", tags={
            "mlflow.parentRunId": parent, "emotune.trial_id": trial_id, "emotune.fold": str(fold),
            "emotune.fold_subjects": ",".join(subjects)})
        self.fold_runs[key] = run.info.run_id
        return self.fold_runs[key]

    def fold_run_ids(self, trial_id: str) -> dict[int, str]:
        """The fold runs of a trial, by fold."""
        self.flush()
        return {int(k.split("/")[1]): v for k, v in self.fold_runs.items() if k.split("/")[0] == trial_id}

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        awaited = self.awaiting_checkpoint.pop(trial.trial_id, None)
        # Only the checkpoint saved with that very result: if the trial died in between, a later checkpoint (from a
        # retry) must not be filed under the earlier best value.
        if (awaited is not None and trial.trial_id in self.best
                and _result_key(trial.last_result or {}) == tuple(awaited)):
            self.best[trial.trial_id] = (self.best[trial.trial_id][0], checkpoint.path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def _log(self, trial_id: str, metrics: list, tags: dict[str, str]) -> None:
        run_id = self._run_id_now(trial_id)
        if run_id is not None:
            self._batch(run_id, metrics, tags)

    def _batch(self, run_id: str, metrics: list, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])

    def _end(self, trial, status: str) -> None:
        from mlflow.entities import Metric

        ended_ms = _now_ms()
        last = trial.last_result or {}
        steps = int(last.get(self.step_key, 0))
        tags = {"emotune.epochs_run": str(steps)}
        if last.get("diverged"):
            tags["emotune.diverged"] = "true"
        if self.max_steps and status == "FINISHED":
            tags["emotune.stopped_early"] = str(steps < self.max_steps).lower()
        if self.folds:
            tags["emotune.folds_done"] = str(int(last.get("folds_done", 0)))
        best_value, ckpt = self.best.get(trial.trial_id, (None, None))
        metrics = [] if best_value is None else [Metric(f"best_{self.metric}", best_value, ended_ms, 0)]
        self._write(self._finish, trial.trial_id, metrics, tags, status, ckpt,
                    _storage_filesystem(trial) if ckpt else None, ended_ms)
        if self.folds:  # a fold cut short by the scheduler (or an error) ends with its trial
            self._write(self._end_folds, trial.trial_id, "FINISHED" if status == "FINISHED" else "FAILED", ended_ms)

    def _finish(self, trial_id: str, metrics: list, tags: dict[str, str], status: str, ckpt: str | None, filesystem,
                ended_ms: int) -> None:
        """The trial's last records (its end tags and best value), best checkpoint and end, as one queued write."""
        run_id = self._run_id_now(trial_id)
        if run_id is None:
            return
        self._batch(run_id, metrics, tags)
        if ckpt:
            # The trial's best checkpoint (Ray keeps the best k by the objective, so it is still in the storage), read
            # through the sweep's storage filesystem: a local folder, or a bucket (s3://, gs://) the trials wrote to.
            if log_checkpoint(self.client, run_id, ckpt, filesystem):
                self.client.set_tag(run_id, "emotune.best_checkpoint", storage_uri(ckpt, filesystem))
        self.client.set_terminated(run_id, status, end_time=ended_ms)

    def _end_folds(self, trial_id: str, status: str, ended_ms: int) -> None:
        for key, run_id in self.fold_runs.items():
            if key.split("/")[0] == trial_id and self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, "emotune.fold_complete", "false")
                self.client.set_terminated(run_id, status, end_time=ended_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_checkpoint(client, run_id: str, checkpoint_dir: str | Path, filesystem=None) -> bool:
    """Copy a trial checkpoint folder into the run's artifacts under ``checkpoint/``; False when it is gone.

    ``checkpoint_dir`` is a path on ``filesystem`` (a ``pyarrow.fs.FileSystem``; the local disk when None), as Ray
    records checkpoints: a remote one (``bucket/prefix/...`` on S3) is downloaded to a temporary folder first.
    """
    if is_local(filesystem):
        if not Path(checkpoint_dir).is_dir():
            return False
        client.log_artifacts(run_id, str(checkpoint_dir), artifact_path="checkpoint")
        return True
    import tempfile

    import pyarrow.fs

    path = str(checkpoint_dir)
    if "://" in path:  # a URI names its own filesystem
        filesystem, path = pyarrow.fs.FileSystem.from_uri(path)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return False
    from ray.tune import Checkpoint

    with tempfile.TemporaryDirectory(prefix="emotune-ckpt-") as tmp:
        Checkpoint(path, filesystem=filesystem).to_directory(tmp)
        client.log_artifacts(run_id, tmp, artifact_path="checkpoint")
    return True


def _storage_filesystem(trial):
    """The ``pyarrow.fs.FileSystem`` a trial's checkpoints are written to (None: the local disk)."""
    storage = getattr(trial, "storage", None)
    return getattr(storage, "storage_filesystem", None)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
