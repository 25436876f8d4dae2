"""The sweep's trial scheduler: ASHA for a study without cross-validation, fold racing (:class:`FoldRacing`) for a
subject K-fold cross-validated one.

A cross-validated trial trains fold 1, then fold 2, ... fold K (always in that order), each for E epochs with a fresh
model, and reports once per fold-epoch (``trainables.loop``): ``fold`` (1..K), ``fold_epoch`` (1..E), ``fold_epochs``
= (fold - 1) * E + fold_epoch (its progress, the scheduler's time attribute; a whole trial is K * E), ``fold_best``
(the best objective value within the current fold so far: at fold_epoch E the fold's score), and the objective itself
as the mean over the folds so far of each fold's score (the unfinished fold counted by its ``fold_best``).

ASHA on that objective would compare a trial one fold into its run with a trial three folds in: different subjects,
a different number of folds, no common ground. Fold racing compares trials on the folds both have finished, fold by
fold (paired), as racing methods do for configurations evaluated on a sequence of instances (F-Race, irace):

* inside fold 1, rungs at ``grace * rf**j`` fold-epochs below E, with ASHA's rule (keep the top 1/rf of the values
  recorded at that rung);
* at each fold boundary E, 2E, ... (K-1)E, a race: the trial is compared with the rung's leader (the trial with the
  best mean score over the same folds among those that have reached this boundary) and stopped when it is clearly
  behind it (the rule and its parameters: :class:`FoldRacing`).

A trial is never compared with one that has more (or fewer) results: a rung holds each trial's scores on exactly the
folds before it.

Tune does not keep a scheduler's state across ``--resume``: the experiment snapshot holds the trials, the searcher and
the callbacks, and the scheduler comes back as ``tuner.pkl`` holds it, as the sweep created it (Ray 2.60:
``TuneController.save_to_dir`` and its ``__getstate__``, which leaves ``_scheduler_alg`` out; ``TunerInternal`` pickles
the ``TuneConfig`` once, before the first trial). So :class:`FoldRacing` writes its rungs to ``fold-racing-state.pkl``
in the experiment's driver folder whenever they change; Tune uploads that folder with every snapshot and downloads it
before a resumed sweep re-adds its trials, and the first trial added loads it back.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from cluster.pareto_asha import asha_milestones

logger = logging.getLogger(__name__)

STATE_FILE = "fold-racing-state.pkl"
FOLD_TIME_ATTR = "fold_epochs"


def make_scheduler(space, time_attr: str, units: int, cv_folds: int = 0) -> TrialScheduler:
    """The sweep's scheduler: ASHA (as the sweep has always built it) when ``cv_folds`` is 0, else fold racing over
    ``cv_folds`` folds of E = ``space.fidelity["max"]`` epochs each.

    Args:
        space: the study (``search_spaces.schema.SearchSpace``): its fidelity's ``grace``, ``reduction_factor`` and
            (with folds) ``max``, the epochs of one fold.
        time_attr: the result key that counts a trial's progress: ``epoch`` or ``step`` without folds,
            ``fold_epochs`` with them.
        units: a whole trial's progress in ``time_attr``: the fidelity's max without folds; with folds K * E (E, one
            fold's, is accepted too and read as per fold).
        cv_folds: K, the number of folds of a cross-validated study; 0 for none.
    """
    grace, rf = int(space.fidelity["grace"]), space.fidelity["reduction_factor"]
    if len(getattr(space, "objectives", ())) > 1:  # several objectives: ASHA promoting by non-dominated sorting
        from cluster.pareto_asha import ParetoASHA

        return ParetoASHA(space.objectives, time_attr=time_attr, max_t=units, grace_period=grace, reduction_factor=rf)
    if not cv_folds:
        return ASHAScheduler(time_attr=time_attr, max_t=units, grace_period=grace, reduction_factor=rf)
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be 0 (no cross-validation) or >= 2, got {cv_folds}")
    if time_attr != FOLD_TIME_ATTR:
        raise ValueError(f"a cross-validated sweep counts its progress in {FOLD_TIME_ATTR!r}, not {time_attr!r}")
    fold_len = int(space.fidelity["max"])
    if units not in (fold_len, cv_folds * fold_len):
        raise ValueError(f"units ({units}) is neither one fold's epochs ({fold_len}) nor all folds' "
                         f"({cv_folds} x {fold_len})")
    return FoldRacing(time_attr=time_attr, folds=cv_folds, fold_epochs=fold_len, grace_period=grace,
                      reduction_factor=rf)


class FoldRacing(FIFOScheduler):
    """Fold racing (module docstring): ASHA's rungs inside fold 1, a race at every later fold boundary.

    The race, at the boundary after fold k (k = 1..K-1), for a trial T against the boundary's leader L (the best mean
    over folds 1..k among the trials that have reached it, T included): with d_i = score_L,i - score_T,i for
    i = 1..k (signs turned for a metric to minimise, so d > 0 means T is behind), T is stopped when

        mean(d) > delta                          (k = 1: one fold, no spread to estimate)
        mean(d) > delta + z * sd(d) / sqrt(k)    (k >= 2)

    ``delta`` (default 0.05, in the objective's units: CCC or PCC on [-1, 1]) is the margin by which a trial must
    trail to be "clearly behind" on a single fold. Scores of one configuration vary from fold to fold by far more
    than this (other subjects), but the difference between two configurations on the same fold removes what the
    fold's subjects do to both, and 0.05 CCC is five times the tolerance within which the search-efficiency
    benchmark counts a configuration as good as the best (0.01): a configuration that trails the leader by more on
    the same subjects is not one a sweep needs to finish to rank. ``z`` (default 1, one standard error of the mean
    difference) widens the margin when the paired differences disagree from fold to fold: a trial that is far behind
    on one fold and level on another is kept, the same lead on every fold stops it (on two folds the rule reads
    exactly "behind by more than delta on both"). F-Race and irace test the same paired differences (Friedman's
    test, a paired t-test), but only from about five instances on; a subject K-fold study has five folds or fewer,
    so the first race is after one fold. Judgment call: a margin, not a significance level: on one to four folds a
    test has almost no power, while a margin says what a stop gives up (the stopped configuration trailed the best
    one on the same subjects by more than ``delta``).

    Inside fold 1 the objective is the fold's best value so far, and ASHA's rule applies at the rungs
    ``grace * reduction_factor**j`` < E: a trial below the (1 - 1/rf) quantile of the values recorded at its rung
    is stopped. Between rungs, and inside folds 2..K (where no rung is), nothing is decided: a trial that starts a
    fold slowly is judged on the fold's score at its end. In fold 1 a slow starter is kept as ASHA keeps it: its
    value at the first rung (the study's ``grace``) must be in the top 1/rf of those recorded there, so a study whose
    configurations differ in how much their first epoch teaches them (how many windows an epoch holds) puts its grace
    past that epoch (paper 003's study: 2 of 20; ``benchmarks/bench_search_efficiency.py`` works the case through).

    Args:
        time_attr: the progress key, ``fold_epochs``.
        folds: K.
        fold_epochs: E, epochs per fold; a whole trial is K * E.
        grace_period, reduction_factor: ASHA's, for the rungs inside fold 1.
        delta, z: the race's margin and spread factor (above).
        metric, mode: the objective; set by Tune from ``TuneConfig`` when None.
    """

    def __init__(self, time_attr: str = FOLD_TIME_ATTR, *, folds: int, fold_epochs: int, grace_period: int = 1,
                 reduction_factor: float = 3, delta: float = 0.05, z: float = 1.0, metric: str | None = None,
                 mode: str | None = None):
        if folds < 2 or fold_epochs < 1 or grace_period < 1 or reduction_factor <= 1 or delta < 0 or z < 0:
            raise ValueError(f"FoldRacing needs folds >= 2, fold_epochs >= 1, grace_period >= 1, reduction_factor > 1,"
                             f" delta >= 0, z >= 0; got {folds}, {fold_epochs}, {grace_period}, {reduction_factor}, "
                             f"{delta}, {z}")
        super().__init__()
        self._time_attr = time_attr
        self._folds, self._fold_len = int(folds), int(fold_epochs)
        self._max_t = self._folds * self._fold_len
        self._rf = reduction_factor
        self._delta, self._z = float(delta), float(z)
        self._metric, self._mode = metric, mode
        milestones = asha_milestones(grace_period, self._fold_len, reduction_factor)
        # State (what fold-racing-state.pkl holds): fold-1 rungs -> {trial: value}, fold boundaries k -> {trial: the
        # scores of folds 1..k}, every trial's fold scores so far, the trials this scheduler stopped.
        self._rungs: dict[float, dict[str, float]] = {m: {} for m in milestones}
        self._boundaries: dict[int, dict[str, tuple[float, ...]]] = {k: {} for k in range(1, self._folds)}
        self._scores: dict[str, dict[int, float]] = {}
        self._stopped: set[str] = set()
        self._state_dir: str | None = None  # the experiment's driver folder, known from the first trial added
        self._unraced: set[str] = set()  # trials without fold scores (warned about once)

    # -- Tune's interface --------------------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    @property
    def _sign(self) -> float:
        return -1.0 if self._mode == "min" else 1.0

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(f"FoldRacing needs a metric and a mode (min or max); got {self._metric!r}, "
                             f"{self._mode!r}: pass them to the scheduler or to tune.TuneConfig")
        if self._state_dir is None:
            storage = getattr(trial, "storage", None)
            if storage is not None:
                self._state_dir = storage.experiment_driver_staging_path
                path = Path(self._state_dir, STATE_FILE)
                if path.is_file() and not self._has_records():  # a resumed sweep: its rungs as its last snapshot
                    self.restore(str(path))
                    logger.info("fold racing: rungs restored from %s", path)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        trial_id = trial.trial_id
        if trial_id in self._stopped:  # reported again after a resume: the decision stands
            return TrialScheduler.STOP
        t = result[self._time_attr]
        changed = self._note_fold_score(trial_id, result)
        if t >= self._max_t:
            decision = TrialScheduler.STOP  # the trial's end (as ASHA's stop_last_trials)
        elif t < self._fold_len:
            decision, recorded = self._asha(trial_id, t, result[self._metric])
            changed |= recorded
        else:
            decision, recorded = self._race(trial_id, t)
            changed |= recorded
        if decision == TrialScheduler.STOP and t < self._max_t:
            self._stopped.add(trial_id)
            changed = True
        if changed:
            self._persist()
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        # A trial's last result was seen by on_trial_result already; a completion carries nothing new to record.
        pass

    def debug_string(self) -> str:
        rungs = " | ".join(f"fold-epoch {m:g}: {len(r)}" for m, r in self._rungs.items())
        races = " | ".join(f"after fold {k}: {len(r)}" for k, r in self._boundaries.items())
        return (f"Using FoldRacing ({self._folds} folds x {self._fold_len} epochs): {len(self._stopped)} stopped; "
                f"fold 1 rungs {rungs or '-'}; races {races}")

    def save(self, checkpoint_path: str) -> None:
        state = {k: getattr(self, k) for k in ("_rungs", "_boundaries", "_scores", "_stopped")}
        tmp = f"{checkpoint_path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(state, f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # -- the rules ---------------------------------------------------------------------------------------------------
    def _asha(self, trial_id: str, t: float, value: float) -> tuple[str, bool]:
        """ASHA's rule at the highest fold-1 rung ``t`` has reached and this trial has no value at yet."""
        for milestone in sorted(self._rungs, reverse=True):
            recorded = self._rungs[milestone]
            if t < milestone or trial_id in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self._rf) * 100) if recorded else None
            v = self._sign * value
            recorded[trial_id] = v
            return (TrialScheduler.STOP if cutoff is not None and v < cutoff else TrialScheduler.CONTINUE), True
        return TrialScheduler.CONTINUE, False

    def _race(self, trial_id: str, t: float) -> tuple[str, bool]:
        """The race at the last fold boundary ``t`` has passed, if this trial has not been raced there yet."""
        k = min(int(t // self._fold_len), self._folds - 1)
        rung = self._boundaries.get(k)
        if rung is None or trial_id in rung:
            return TrialScheduler.CONTINUE, False
        scores = self._scores.get(trial_id, {})
        if any(i not in scores for i in range(1, k + 1)):
            if trial_id not in self._unraced:
                self._unraced.add(trial_id)
                logger.warning("fold racing: trial %s passed fold %d without a fold_best at each fold's end; it is "
                               "not raced", trial_id, k)
            return TrialScheduler.CONTINUE, False
        mine = tuple(scores[i] for i in range(1, k + 1))
        rung[trial_id] = mine
        leader = max(rung.values(), key=lambda s: sum(s))
        return (TrialScheduler.STOP if self.clearly_behind(mine, leader) else TrialScheduler.CONTINUE), True

    def clearly_behind(self, mine: tuple[float, ...], leader: tuple[float, ...]) -> bool:
        """The race's rule (class docstring) for paired fold scores, both already signed so that higher is better."""
        d = [a - b for a, b in zip(leader, mine, strict=True)]
        k = len(d)
        mean = sum(d) / k
        if k == 1:
            return mean > self._delta
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1))
        return mean > self._delta + self._z * sd / math.sqrt(k)

    def _note_fold_score(self, trial_id: str, result: dict) -> bool:
        """Keep the fold's score when ``result`` ends a fold (its fold_best at fold_epoch E)."""
        fold, epoch, best = result.get("fold"), result.get("fold_epoch"), result.get("fold_best")
        if fold is None or epoch is None or best is None or int(epoch) < self._fold_len:
            return False
        scores = self._scores.setdefault(trial_id, {})
        if scores.get(int(fold)) == self._sign * float(best):
            return False
        scores[int(fold)] = self._sign * float(best)
        return True

    # -- persistence -------------------------------------------------------------------------------------------------
    def _has_records(self) -> bool:
        return bool(self._scores or self._stopped or any(self._rungs.values()) or any(self._boundaries.values()))

    def _persist(self) -> None:
        if self._state_dir is None:
            return
        try:
            os.makedirs(self._state_dir, exist_ok=True)
            self.save(os.path.join(self._state_dir, STATE_FILE))
        except OSError as exc:  # a full disk costs the rungs on --resume, not the sweep
            logger.warning("fold racing: could not save its rungs: %s", exc)
