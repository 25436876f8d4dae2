"""A compact progress printer for sweeps: one line per trial start, epoch and end, instead of Tune's tables."""
from __future__ import annotations

import time

from ray.tune import Callback

from trainables import console


class ProgressPrinter(Callback):
    def __init__(self, metric: str, step_key: str = "epoch", max_steps: int | None = None, stream=None):
        self.metric, self.step_key, self.max_steps = metric, step_key, max_steps
        self.stream = stream  # None: emotune's console (trainables.console)
        self.t0 = time.time()
        self.done = 0

    def _say(self, text: str) -> None:
        print(f"  [{time.time() - self.t0:6.0f} s] {text}", file=self.stream or console.out(), flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        # A cross-validated trial: which fold and epoch, and the objective is the mean over its folds so far.
        where = (f"fold {result['fold']} epoch {result['fold_epoch']}" if "fold" in result else
                 f"{self.step_key} {result.get(self.step_key)}/{self.max_steps}")
        self._say(f"trial {trial.trial_id} {where}: {self.metric} {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        steps = last.get(self.step_key)
        early = " (stopped early)" if self.max_steps and steps is not None and steps < self.max_steps else ""
        what = f"{last['folds_done']} fold(s)" if "folds_done" in last else f"{steps} {self.step_key}(s)"
        self._say(f"trial {trial.trial_id} finished after {what}{early}; {self.done} done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self._say(f"trial {trial.trial_id} FAILED; see {trial.local_path}; {self.done} done")
