"""The Pareto fronts of a sweep: what its complete trials trade off (:mod:`analysis.pareto` does the arithmetic).

* A sweep with one objective has costs too (every trial measures them: ``trainables.costs``), so it has one front per
  cost: the objective against ``gflops``, ``params_m``, ``train_s`` and ``infer_ms`` (:data:`COST_FRONTS`; the
  inference time is measured on whatever else the machine runs, so on shared CPU cores that front is noisy).
* A sweep of a study with ``objectives:`` (its parent run's tag ``emotune.objectives``) has one front, over those 2
  or 3 objectives.

Only complete trials count (:meth:`analysis.sweeps.Sweep.completed`: a trial stopped early is a model trained less,
its training time cut short). Each trial's values are :meth:`analysis.sweeps.Sweep.value`'s: the primary objective at
the trial's best epoch, another metric at that same epoch, a cost as measured. The hypervolume of a front is taken
against the reference point :func:`analysis.pareto.reference_point` chooses from the values shown (0, or the worst
value below 0, for a maximised objective; 1.1 x the largest value of a minimised one), in the product of the
objectives' units, and every page that shows a hypervolume states its reference point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from analysis import pareto
from analysis.sweeps import Sweep, Trial

#: The costs a single-objective sweep's fronts put against its objective, in this order.
COST_FRONTS = ("gflops", "params_m", "train_s", "infer_ms")
#: Costs measured as wall time of the machine the trial ran on, next to whatever else it ran.
NOISY = {"infer_ms": "inference ms per window is wall time: on shared CPU cores it varies with the load, so this "
                     "front moves from one measurement to the next"}


@dataclass
class Front:
    """The complete trials of a sweep placed by ``names`` (each with its ``modes``): their non-dominated ranks
    (1: on the Pareto front) and the front's hypervolume against ``reference``."""

    names: tuple[str, ...]
    modes: tuple[str, ...]
    trials: list[Trial]  # the complete trials with a finite value of every name
    values: list[tuple[float, ...]]  # per trial, in the objectives' own units
    ranks: list[int]  # per trial: its front in the non-dominated sort (1 = the Pareto front)
    reference: tuple[float, ...] | None
    hypervolume: float
    left_out: int = 0  # complete trials without a finite value of every name
    note: str = ""

    @property
    def members(self) -> list[int]:
        """Indexes of the trials on the front, best first by the first objective."""
        on = [i for i, r in enumerate(self.ranks) if r == 1]
        sign = -1.0 if self.modes[0] == "max" else 1.0
        return sorted(on, key=lambda i: (sign * self.values[i][0], self.trials[i].start_time))

    def member_ids(self) -> list[str]:
        return [self.trials[i].trial_id for i in self.members]

    @property
    def title(self) -> str:
        return " against ".join(f"{n} ({m})" for n, m in zip(self.names, self.modes))

    def reference_text(self) -> str:
        if self.reference is None:
            return "-"
        return ", ".join(f"{n} = {_num(r)}" for n, r in zip(self.names, self.reference))

    def hypervolume_text(self) -> str:
        if self.reference is None:
            return "none (no complete trial with every value)"
        return f"{_num(self.hypervolume)} (reference point: {self.reference_text()})"


def _num(v: float) -> str:
    """A value as a page prints it: 4 significant digits (GFLOPs of a tiny model are 1e-3, seconds are 1e2)."""
    return f"{v:.4g}"


def build_front(sweep: Sweep, names: tuple[str, ...], modes: tuple[str, ...],
                reference: tuple[float, ...] | None = None) -> Front:
    """The front of ``sweep``'s complete trials over ``names``; ``reference`` defaults to
    :func:`analysis.pareto.reference_point` of their values (a comparison gives several sweeps one reference)."""
    trials, values, left_out = [], [], 0
    for t in sweep.completed():
        v = tuple(sweep.value(t, n) for n in names)
        if all(math.isfinite(x) for x in v):
            trials.append(t)
            values.append(v)
        else:
            left_out += 1
    if not trials:
        return Front(names, modes, [], [], [], None, math.nan, left_out,
                     note=f"no complete trial recorded {', '.join(names)}")
    points = [pareto.minimised(v, modes) for v in values]
    ranks = [0] * len(points)
    for number, members in enumerate(pareto.non_dominated_sort(points), 1):
        for i in members:
            ranks[i] = number
    if reference is None:
        reference = pareto.reference_point(list(zip(*values)), modes)
    volume = pareto.hypervolume(points, pareto.minimised(reference, modes))
    return Front(names, modes, trials, values, ranks, tuple(reference), volume, left_out,
                 note=NOISY.get(names[-1], "") if len(names) == 2 else "")


def sweep_fronts(sweep: Sweep) -> list[Front]:
    """The fronts of a sweep (module docstring): over its objectives when it has several, else its objective against
    each cost of :data:`COST_FRONTS`."""
    if sweep.multi_objective:
        return [build_front(sweep, tuple(n for n, _ in sweep.objectives), tuple(m for _, m in sweep.objectives))]
    return [build_front(sweep, (sweep.metric, cost), (sweep.mode, "min")) for cost in COST_FRONTS]


def objective_ranks(sweep: Sweep) -> dict[str, int]:
    """Trial id -> its non-dominated rank over the sweep's objectives (1: on the front), for the complete trials with
    every objective's value; {} for a single-objective sweep (its leaderboard ranks by the one objective)."""
    if not sweep.multi_objective:
        return {}
    front = sweep_fronts(sweep)[0]
    return {t.trial_id: r for t, r in zip(front.trials, front.ranks)}


@dataclass
class FrontRows:
    """A front as a table: the trials on it (best first by the first objective) with their values and costs."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)


def front_rows(sweep: Sweep, front: Front) -> FrontRows:
    """The trials on ``front`` with their searched parameters, the front's values and the other costs."""
    others = [c for c in ("gflops", "params_m", "train_s", "infer_ms", "peak_mem_mb") if c not in front.names]
    table = FrontRows(["trial", *sweep.searched, *front.names, *others])
    for i in front.members:
        t = front.trials[i]
        table.rows.append([t.trial_id, *(t.params.get(p) for p in sweep.searched), *front.values[i],
                           *(t.costs.get(c) for c in others)])
    return table


def shared_fronts(sweeps: list[Sweep], cost: str = "gflops") -> tuple[list[Front], bool]:
    """Each sweep's front of its primary objective against ``cost`` (``emotune compare``), and whether their
    hypervolumes share one reference point: they do when every sweep has the same primary objective and mode (the
    reference of :func:`analysis.pareto.reference_point` over every sweep's values), so the hypervolumes compare;
    otherwise each front has its own."""
    fronts = [build_front(s, (s.metric, cost), (s.mode, "min")) for s in sweeps]
    if len({(s.metric, s.mode) for s in sweeps}) != 1 or not any(f.trials for f in fronts):
        return fronts, False
    values = [v for f in fronts for v in f.values]
    reference = pareto.reference_point(list(zip(*values)), (sweeps[0].mode, "min"))
    return [build_front(s, (s.metric, cost), (s.mode, "min"), reference=reference) for s in sweeps], True
