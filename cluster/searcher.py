"""The sweep's searcher: Optuna (TPE by default) through Ray Tune's ``OptunaSearch``, never training a configuration
twice.

On a discrete study (paper 003's window grid, the SSTS strides) TPE proposes configurations it has already seen: its
densities are per parameter, so once one value of each parameter is best it keeps drawing the same combination. Every
such repeat is a full trial spent on an answer the sweep already has (CPU training is reproducible: a repeat scores the
same). :class:`DistinctOptunaSearch` checks each suggestion against the study's trials (finished, stopped by ASHA, or
running) before Tune starts it:

1. a repeat is not trained. Its Optuna trial is closed as FAIL with the user attribute ``emotune_repeat_of`` (the
   number of the trial it repeats), which TPE ignores, and TPE is asked again, ``reasks`` times (once by default:
   TPE draws at random, but it mostly proposes the same combination again, and every re-ask leaves one more closed
   trial in the study);
2. if TPE still repeats itself and the space is finite, the sweep trains the untried configuration closest to TPE's
   choice instead (fewest parameters changed). Among equally close ones it takes the one whose changed values TPE
   rates highest: for each changed parameter the ratio of the value's frequency among the study's good trials to its
   frequency among the rest (TPE's own l(x) / g(x), with its split: the best 10% of the finished trials, a stopped
   trial ranked below every finished one, and a prior weight of one spread over the parameter's values), multiplied
   over the changed parameters (with TPE as the sampler; with another, the closest are equal); remaining ties are
   drawn with the sweep's seed. It is enqueued in the Optuna study,
   so Optuna records it as its own trial. Judgment call: a neighbour keeps TPE's preference for the other
   parameters, where a uniformly random untried configuration would throw it away; and when TPE keeps proposing
   its best trial's configuration, that trial's neighbours differ in how promising the study has shown their one
   changed value to be (a window length every good trial used, or one only bad trials used), which a draw ignored;
3. when every configuration of a finite space has been tried, the searcher reports that it is finished and the sweep
   ends with fewer trials than ``--trials``, saying so.

On a study with a continuous parameter (a learning rate) repeats do not occur in practice, and a repeat after the
re-asks is trained.

A trial that Tune stopped before its end (ASHA, ``cluster.racing``'s fold racing, or the sweep's time budget) is
not a finished measurement: its last value is the objective after fewer epochs (or folds) than the study trains,
usually far below what the configuration reaches. Told to Optuna as COMPLETE (Ray's ``OptunaSearch`` does that), TPE
ranks it with the finished trials by that early value. :class:`DistinctOptunaSearch` tells it as PRUNED instead, with
its last value as its last intermediate value (Ray reports every earlier result as one, at its
``training_iteration``; the result that stopped it is not passed to ``on_trial_result``, so it is reported here, at
its own ``training_iteration``). TPE ranks pruned trials below every complete one, among themselves by how far they
got, then by that last value, and a pruned trial still counts as tried (no configuration is started twice). A trial is
stopped before its end when its progress (the scheduler's time attribute) is below the study's maximum at completion
and it did not error; a trial that diverged ends early too, but its worst value is its final answer: COMPLETE.

With several objectives (``objectives:``) Optuna keeps no values for a pruned trial (a multi-objective study takes
no intermediate reports), so a stopped trial would teach the sampler nothing. It is told COMPLETE with the values it
had when it stopped (its rung values: an early CCC, and costs that do not change) and the user attribute
``emotune_stopped_at`` (its progress then): TPE or NSGA-II place it by those values, which for the costs are exact and
for the accuracy pessimistic (judgment call: a configuration stopped for a poor early CCC is a poor bet, as ASHA
judged), and every analysis can tell it from a finished trial.

A resumed sweep restores the searcher from Tune's last experiment snapshot. A driver killed after asking Optuna for a
trial but before the next snapshot leaves that Optuna trial with no Tune trial behind it, running, or even finished
(a short trial can end within the second between two snapshots): kept as it is, it would block its configuration for
good (it counts as tried) while the budget goes to another one. On restore such a trial is set aside: a running one is
closed as FAIL with the user attribute ``emotune_lost_with_driver`` (TPE ignores it); a finished one cannot be changed
in Optuna, so its number is listed in the study's user attribute ``emotune_lost_with_driver`` (TPE keeps its value, a
real measurement) and it no longer counts as tried. Its configuration is enqueued, so the resumed sweep trains it,
once, as a trial Tune knows (and records in MLflow: ``cluster.tracking`` deletes the lost trial's run).
"""
from __future__ import annotations

import logging
import random
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables import console

logger = logging.getLogger(__name__)

REPEAT_ATTR = "emotune_repeat_of"
LOST_ATTR = "emotune_lost_with_driver"
STOPPED_ATTR = "emotune_stopped_at"


def _key(params: dict[str, Any]) -> tuple:
    """A hashable, order-free form of one configuration's params (floats compared to 10 significant digits)."""
    return tuple(sorted((k, float(f"{v:.10g}") if isinstance(v, float) else v) for k, v in params.items()))


class DistinctOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that does not start a configuration the study already holds (see the module docstring).

    Args:
        points: every configuration of the space (``search_spaces.schema.finite_points``), or None when the space is
            continuous or too large to list.
        seed: draws among equally close untried configurations.
        reasks: how many times TPE is asked again after a repeat before a neighbour is chosen.
        progress_attr, max_progress: the scheduler's time attribute (``epoch``, ``step``, ``fold_epochs``) and the
            progress a trial that ran to its end has reached; a trial completing below it was stopped and is told to
            Optuna as PRUNED (module docstring). None: every trial is told as ``OptunaSearch`` tells it.
        (the rest): as ``OptunaSearch``.
    """

    def __init__(self, *args, points: list[dict[str, Any]] | None = None, seed: int = 0, reasks: int = 1,
                 progress_attr: str | None = None, max_progress: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._points = points
        self._seed = seed
        self._reasks = reasks
        self._progress_attr = progress_attr
        self._max_progress = max_progress
        self.repeats_skipped = 0
        self.neighbours_chosen = 0
        self.exhausted = False
        self._lost: set[int] = set()  # Optuna trials of a driver that stopped before Tune recorded them

    def suggest(self, trial_id: str) -> dict | str | None:
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        for attempt in range(self._reasks + 1):
            trial = self._ot_trials[trial_id]
            earlier = self._earlier_with(trial)
            if earlier is None:
                return config
            self._close_repeat(trial_id, trial, earlier)
            if attempt < self._reasks:
                config = super().suggest(trial_id)
        # TPE keeps proposing what the study has: train the closest untried configuration, if the space is listed.
        if self._points is None:
            return super().suggest(trial_id)
        point = self._closest_untried(trial.params)
        if point is None:
            self.exhausted = True
            console.say(f"search: every one of the study's {len(self._points)} configurations has been tried; "
                        "the sweep ends here")
            return Searcher.FINISHED
        self.neighbours_chosen += 1
        self._ot_study.enqueue_trial(point)
        return super().suggest(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.recover_lost_trials()

    # A trial that finished after the last snapshot of a killed driver runs again from its checkpoint when the sweep
    # resumes; its Optuna trial was told already (Optuna refuses to update a finished trial) and keeps that record.
    def _told_already(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        return trial is not None and self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._told_already(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._told_already(trial_id):
            self._completed_trials.add(trial_id)
            return
        if trial_id not in self._completed_trials and self.stopped_early(result, error):
            if isinstance(self.metric, list):  # several objectives: complete, with where it stopped (docstring)
                self._ot_trials[trial_id].set_user_attr(STOPPED_ATTR, float(result[self._progress_attr]))
            else:
                self._tell_pruned(trial_id, result)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def stopped_early(self, result: dict | None, error: bool = False) -> bool:
        """Whether a trial completing with ``result`` was stopped before its end (module docstring)."""
        attr, most = getattr(self, "_progress_attr", None), getattr(self, "_max_progress", None)
        if error or not result or attr is None or most is None:
            return False
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        progress = result.get(attr)
        if progress is None or any(result.get(m) is None for m in metrics) or result.get("diverged") == 1:
            return False
        return float(progress) < float(most)

    def _tell_pruned(self, trial_id: str, result: dict) -> None:
        """Tell Optuna that a stopped trial was PRUNED, its last value reported first as its last intermediate value
        (Optuna takes no final value for a pruned trial; it records the last intermediate one as the trial's value)."""
        from optuna.trial import TrialState

        ot_trial = self._ot_trials[trial_id]
        step = int(result.get("training_iteration") or result[self._progress_attr])
        reported = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
        if step not in reported:
            ot_trial.report(float(result[self.metric]), step)
        try:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        except Exception as exc:  # as OptunaSearch does: a refused tell (a NaN value) is logged, not raised
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def recover_lost_trials(self) -> list[int]:
        """Set aside the study's trials this (restored) searcher did not start and enqueue their configurations
        (module docstring); returns their numbers."""
        from optuna.trial import TrialState

        self._lost = set(getattr(self, "_lost", ()))
        known = {t._trial_id for t in self._ot_trials.values()}
        states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        lost = [t for t in self._ot_study.get_trials(deepcopy=False, states=states)
                if t._trial_id not in known and t.number not in self._lost]
        for trial in lost:
            if trial.state == TrialState.RUNNING:
                self._ot_study._storage.set_trial_user_attr(trial._trial_id, LOST_ATTR, True)
                self._ot_study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            self._lost.add(trial.number)
            if trial.params and _key(trial.params) not in self._tried():
                self._ot_study.enqueue_trial(trial.params)
            logger.info("Optuna trial %d was started by a driver that stopped before recording it; its "
                        "configuration is trained again", trial.number)
        if lost:
            self._ot_study.set_user_attr(LOST_ATTR, sorted(self._lost))
        return [t.number for t in lost]

    # ------------------------------------------------------------------------------------------------------------
    def _tried(self, exclude: int | None = None) -> dict[tuple, Any]:
        """Configurations the study holds, finished, stopped by ASHA, or running -> one such Optuna trial."""
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        lost = getattr(self, "_lost", ())
        return {_key(t.params): t for t in self._ot_study.get_trials(deepcopy=False, states=states)
                if t.number != exclude and t.number not in lost}

    def _earlier_with(self, trial) -> Any:
        """An earlier (or running) trial of the study with ``trial``'s params, or None."""
        return self._tried(exclude=trial.number).get(_key(trial.params))

    def _close_repeat(self, trial_id: str, trial, earlier) -> None:
        from optuna.trial import TrialState

        del self._ot_trials[trial_id]
        trial.set_user_attr(REPEAT_ATTR, earlier.number)
        self._ot_study.tell(trial, state=TrialState.FAIL)
        self.repeats_skipped += 1
        logger.info("trial %s: TPE repeated Optuna trial %d (%s); not trained", trial_id, earlier.number,
                    trial.params)

    def _closest_untried(self, wanted: dict[str, Any]) -> dict[str, Any] | None:
        tried = self._tried()
        untried = [p for p in self._points if _key(p) not in tried]
        if not untried:
            return None

        def changed(point: dict[str, Any]) -> int:
            return sum(point.get(k) != wanted.get(k) for k in set(point) | set(wanted))

        fewest = min(changed(p) for p in untried)
        closest = [p for p in untried if changed(p) == fewest]
        ratios = self._value_ratios()
        if ratios is not None and len(closest) > 1:
            def rating(point: dict[str, Any]) -> float:
                return sum(ratios.get((k, v), 0.0) for k, v in point.items() if wanted.get(k) != v)

            top = max(rating(p) for p in closest)
            closest = [p for p in closest if rating(p) >= top - 1e-9]
        return random.Random(self._seed * 1_000_003 + len(tried)).choice(closest)

    def _value_ratios(self) -> dict[tuple[str, Any], float] | None:
        """log(l / g) of every (parameter, value) of the listed space, with TPE's split of the study's finished and
        stopped trials into good and the rest (module docstring); None with fewer than two such trials, several
        objectives, or a sampler other than TPE (random search keeps its draw)."""
        import math

        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        # The class from its own module: a caller may rebind the name optuna.samplers.TPESampler (the search
        # benchmark does, to run random search through the same sweep).
        from optuna.samplers._tpe.sampler import TPESampler

        if len(self._ot_study.directions) != 1 or not isinstance(self._ot_study.sampler, TPESampler):
            return None
        lost = getattr(self, "_lost", ())
        sign = 1.0 if self._ot_study.direction == StudyDirection.MINIMIZE else -1.0
        done = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                if t.number not in lost]
        if len(done) < 2:
            return None

        def order(t) -> tuple:  # TPE's: finished by value, then stopped by how far they got, then by their last value
            if t.state == TrialState.COMPLETE:
                return (0, 0, sign * t.value)
            if not t.intermediate_values:
                return (1, 1, 0.0)
            step, value = max(t.intermediate_values.items())
            return (1, -step, sign * value)

        done.sort(key=order)
        n_good = min(math.ceil(0.1 * len(done)), 25)  # TPE's default gamma
        good, rest = done[:n_good], done[n_good:]
        values: dict[str, set] = {}
        for point in self._points:
            for k, v in point.items():
                values.setdefault(k, set()).add(v)

        def density(group, k, v) -> float:
            holding = [t.params[k] for t in group if k in t.params]
            return (sum(x == v for x in holding) + 1 / len(values[k])) / (len(holding) + 1)

        return {(k, v): math.log(density(good, k, v) / density(rest, k, v)) for k, vs in values.items() for v in vs}
