"""Early stopping with several objectives: ASHA whose rungs promote by non-dominated sorting (after MO-ASHA,
Schmucker et al. 2021), for a study with ``objectives:`` (accuracy against a cost, say ``val_ccc_mean: max`` and
``gflops: min``).

At each rung (``grace * reduction_factor**j`` below the fidelity's max, as ASHA's) a trial's objective vector is
recorded when it first reaches the rung, and compared with the vectors recorded there so far (asynchronously, as ASHA
does): the recorded trials are sorted into non-dominated fronts (front 1: dominated by none; front 2: dominated only
by front 1; ...), ordered by front, and within a front by crowding distance (NSGA-II's: the trials at a front's ends
first, then those with the emptiest neighbourhood, which keeps the front spread along the trade-off), ties by the
primary objective. The trial continues if it is among the first ceil(n / reduction_factor) of the n recorded trials,
else it stops; with one objective this is ASHA's "top 1/rf" (the sweep uses Ray's ASHA then).

Costs known before training (parameters, FLOPs) are reported from the first result, so a trial cheap in FLOPs but
poor in CCC and one accurate but costly both sit on the first front and survive the rung.

A study with several objectives that does not set ``fidelity.grace`` starts at ``reduction_factor`` units, not 1
(``search_spaces.schema.multi_objective_grace``): at the earliest rung an accuracy that has barely started is weighed
against costs that are already exact, so a configuration that learns late is dominated by a cheap one that starts
fast and stopped for good.

Like Ray's ASHA, the rungs live in the driver's memory: a resumed sweep starts them afresh (its trials continue).
"""
from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

__all__ = ["ParetoASHA", "asha_milestones", "crowding_distances", "nondominated_fronts"]


def asha_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[float]:
    """ASHA's rungs below ``max_t``: ``grace_period * reduction_factor ** j`` (also FoldRacing's within its first
    fold)."""
    milestones, m = [], grace_period
    while m < max_t:
        milestones.append(m)
        m *= reduction_factor
    return milestones


def nondominated_fronts(points: list[tuple[float, ...]]) -> list[list[int]]:
    """Indexes of ``points`` (every coordinate to maximise) by front, the first front first
    (``analysis.pareto.non_dominated_sort``, which minimises)."""
    from analysis.pareto import non_dominated_sort

    return non_dominated_sort([tuple(-x for x in p) for p in points])


def crowding_distances(points: list[tuple[float, ...]], front: list[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of ``front``: infinite at the ends of every objective, else the
    sum over objectives of the gap between its neighbours, normalised by the front's range."""
    distance = {i: 0.0 for i in front}
    for axis in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: points[i][axis])
        low, high = points[ordered[0]][axis], points[ordered[-1]][axis]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (points[after][axis] - points[before][axis]) / (high - low)
    return distance


def pareto_order(points: list[tuple[float, ...]]) -> list[int]:
    """Indexes of ``points`` best first: by front, then crowding distance (larger first), then the first coordinate."""
    order = []
    for front in nondominated_fronts(points):
        crowd = crowding_distances(points, front)
        order += sorted(front, key=lambda i: (-crowd[i], -points[i][0], i))
    return order


class ParetoASHA(FIFOScheduler):
    """ASHA's rungs, promoting by non-dominated sorting over several objectives (module docstring).

    Args:
        objectives: (metric, mode) pairs, the primary one first.
        time_attr, max_t, grace_period, reduction_factor: as ASHA's.
    """

    def __init__(self, objectives: tuple[tuple[str, str], ...], time_attr: str = "epoch", max_t: int = 100,
                 grace_period: int = 1, reduction_factor: float = 3):
        if len(objectives) < 2 or grace_period < 1 or reduction_factor <= 1:
            raise ValueError("ParetoASHA needs 2 or more objectives, grace_period >= 1 and reduction_factor > 1")
        super().__init__()
        self._objectives = tuple((str(m), str(mode)) for m, mode in objectives)
        self._time_attr, self._max_t, self._rf = time_attr, max_t, reduction_factor
        self._rungs: dict[float, dict[str, tuple[float, ...]]] = {
            m: {} for m in asha_milestones(grace_period, max_t, reduction_factor)}
        self.stopped: set[str] = set()

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are the study's, given at construction

    def _vector(self, result: dict) -> tuple[float, ...] | None:
        values = []
        for metric, mode in self._objectives:
            value = result.get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return None
            values.append(float(value) if mode == "max" else -float(value))
        return tuple(values)

    def decide(self, trial_id: str, progress: float, result: dict) -> str:
        """CONTINUE or STOP for a result of ``trial_id`` at ``progress`` (the table-driven heart of the scheduler)."""
        if result.get("diverged"):
            return TrialScheduler.STOP
        for milestone, recorded in self._rungs.items():
            if progress < milestone or trial_id in recorded:
                continue
            vector = self._vector(result)
            if vector is None:
                return TrialScheduler.CONTINUE
            recorded[trial_id] = vector
            ids = list(recorded)
            order = pareto_order([recorded[i] for i in ids])
            keep = {ids[i] for i in order[: math.ceil(len(ids) / self._rf)]}
            if trial_id not in keep:
                self.stopped.add(trial_id)
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        progress = result.get(self._time_attr)
        if progress is None:
            return TrialScheduler.CONTINUE
        if progress >= self._max_t:
            return TrialScheduler.STOP
        return self.decide(trial.trial_id, float(progress), result)

    def debug_string(self) -> str:
        return "ParetoASHA: " + ", ".join(f"rung {m}: {len(r)} trial(s)" for m, r in self._rungs.items())
