"""Which checkpoints of an inline trial are kept: its ``keep`` best by the objective and its latest, deleted in step with
Tune's experiment snapshots.

Tune's own retention (``CheckpointConfig(num_to_keep=k)``) deletes a trial's older checkpoints as new ones arrive and,
so that the experiment snapshot never names a deleted checkpoint, forces a snapshot whenever a trial has saved ``k``
checkpoints since the last one. A trial on short epochs saves several a second, so the snapshots came faster than
Tune's own threshold and it warned, several times per demo, that "experiment state snapshotting has been triggered
multiple times". Here Tune keeps every checkpoint (``num_to_keep=None``: it never forces a snapshot) and
:class:`CheckpointRetention` deletes the ones a trial no longer needs once they have been superseded for
``grace_s`` seconds: longer than the snapshot period (:data:`SNAPSHOT_PERIOD_S`), so the snapshot that
``--resume`` reads already names a newer latest checkpoint. A checkpoint is kept while it is the trial's latest (a
retry resumes from it) or among its ``keep`` best (the MLflow record logs the best one when the trial ends).

Ray Train trials keep their checkpoints through the TorchTrainer's own ``CheckpointConfig`` (Train's controller, not
Tune's snapshot) and report them to Tune by path; this callback does not see them.
"""
from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

#: Seconds between Tune's experiment snapshots (``TUNE_GLOBAL_CHECKPOINT_S``, set by ``cluster.sweep.init_ray``).
SNAPSHOT_PERIOD_S = 1


def tune_checkpointing(runtime: dict) -> tuple[Any, "CheckpointRetention"]:
    """Tune's checkpoint config for a sweep's (or a retraining's) trials and the callback that keeps their
    ``keep_checkpoints`` best and latest (module docstring)."""
    from ray import tune

    keep = int(runtime.get("keep_checkpoints", 2))
    config = tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=runtime["metric"],
                                   checkpoint_score_order=runtime["mode"])
    return config, CheckpointRetention(keep, runtime["metric"], runtime["mode"], grace_s=3 * SNAPSHOT_PERIOD_S)


class CheckpointRetention(Callback):
    def __init__(self, keep: int, metric: str, mode: str, grace_s: float):
        self.keep, self.metric, self.mode, self.grace_s = int(keep), metric, mode, float(grace_s)
        self.saved: dict[str, list[tuple[float, int, str]]] = {}  # trial id -> (score, order, path), oldest first
        self.doomed: dict[str, list[tuple[float, str]]] = {}  # trial id -> (time it became unneeded, path)

    # Tune saves and restores callback state with each experiment snapshot, so a resumed sweep still cleans up.
    def get_state(self) -> dict:
        return {"saved": {k: list(v) for k, v in self.saved.items()},
                # due at once after a restore: the snapshot holding this already names a newer latest
                "doomed": {k: [(-math.inf, p) for _, p in v] for k, v in self.doomed.items()}}

    def set_state(self, state: dict) -> None:
        self.saved.update({k: [tuple(x) for x in v] for k, v in state.get("saved", {}).items()})
        self.doomed.update({k: [tuple(x) for x in v] for k, v in state.get("doomed", {}).items()})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        value = (trial.last_result or {}).get(self.metric)
        score = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf
        if self.mode == "min" and score != -math.inf:
            score = -score
        saved = self.saved.setdefault(trial.trial_id, [])
        saved.append((score, len(saved), checkpoint.path))
        needed = self._needed(saved)
        now = time.monotonic()
        for entry in [e for e in saved if e not in needed]:
            saved.remove(entry)
            self.doomed.setdefault(trial.trial_id, []).append((now, entry[2]))

    def _needed(self, saved: list[tuple[float, int, str]]) -> list[tuple[float, int, str]]:
        # the latest, and the best ``keep`` (ties: the later one, as the MLflow record chooses)
        best = sorted(saved, key=lambda e: (e[0], e[1]), reverse=True)[: self.keep]
        return [e for e in saved if e in best or e is saved[-1]]

    def on_step_end(self, iteration, trials, **info):
        self._delete(trials, time.monotonic() - self.grace_s)

    def on_experiment_end(self, trials, **info):
        # Tune has written its final snapshot: nothing superseded is needed any more.
        self._delete(trials, math.inf)

    def _delete(self, trials: list, before: float) -> None:
        if not self.doomed:
            return
        by_id = {t.trial_id: t for t in trials}
        for trial_id, entries in list(self.doomed.items()):
            trial = by_id.get(trial_id)
            due = [e for e in entries if e[0] <= before]
            if trial is None or not due:
                continue
            for entry in due:
                _delete_dir(trial, entry[1])
                entries.remove(entry)
            if not entries:
                del self.doomed[trial_id]


def _delete_dir(trial: Any, path: str) -> None:
    """Remove a checkpoint folder from the trial's storage (a local folder or an object store)."""
    fs = trial.storage.storage_filesystem
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a folder that cannot be removed now is not worth failing the sweep for
        import logging

        logging.getLogger(__name__).warning("could not remove checkpoint %s: %s", path, exc)
