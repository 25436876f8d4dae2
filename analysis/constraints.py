"""Constrained promotion (``emotune promote SWEEP --constraint "gflops<=2" --constraint "params_m<=10"``): among a
sweep's complete trials, the best by its first objective of those that meet every constraint.

A constraint is ``<name><op><number>``: ``op`` one of ``<=``, ``<``, ``>=``, ``>``; ``name`` a cost every trial
measures (``params_m``, ``gflops``, ``infer_ms``, ``train_s``, ``peak_mem_mb``: ``trainables.costs``) or a
validation metric trials report (``val_ccc_mean``, ``val_rmse_arousal``, ...: ``trainables.reports``). A trial's value
is :meth:`analysis.sweeps.Sweep.value`'s: a cost as measured (``train_s`` summed over every report), the primary
objective as the leaderboard has it, another metric at the trial's best epoch by the primary objective (the
checkpoint promotion would register); a cross-validated trial's objective is its mean over folds and its other metrics
are those of its pooled out-of-fold predictions.

Only complete trials are chosen from (:meth:`analysis.sweeps.Sweep.completed`: every epoch, a cross-validated trial
every fold; a trial stopped early is a model trained less). A trial without a value for a constraint's name does not
meet it. When no complete trial meets every constraint, the refusal names the constraints and the closest trial: the
one whose values miss their bounds by the least, summed over the constraints as fractions of each bound.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trainables.errors import UserError
from trainables.reports import COST_KEYS, reported_metrics

OPS = ("<=", ">=", "<", ">")
_GRAMMAR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def allowed_names() -> set[str]:
    """Every name a constraint may take: the measured costs and the validation metrics trials report."""
    metrics = reported_metrics() | reported_metrics(native_scale=(0.0, 1.0))
    return set(COST_KEYS) | {m for m in metrics if m.startswith("val_")}


def allowed_text() -> str:
    """What a constraint may name, in one line."""
    return (f"costs {', '.join(COST_KEYS)}; metrics val_<ccc|pcc|rmse|mae|mape>_<valence|arousal> and val_ccc_mean "
            f"(each also as _raw, and as _native on a dataset with a native label scale)")


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str
    bound: float

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the constraint (a missing value, NaN, meets none)."""
        if value is None or not math.isfinite(value):
            return False
        return {"<=": value <= self.bound, "<": value < self.bound, ">=": value >= self.bound,
                ">": value > self.bound}[self.op]

    def shortfall(self, value: float) -> float:
        """How far ``value`` misses the bound, as a fraction of the bound's size (of 1 for a bound of 0); 0 when it
        meets it or sits on a strict bound; infinite without a value."""
        if value is None or not math.isfinite(value):
            return math.inf
        over = value - self.bound if self.op in ("<=", "<") else self.bound - value
        return max(0.0, over) / (abs(self.bound) or 1.0)

    def text(self) -> str:
        """``gflops<=2``: the bound as given (every digit a float keeps, no trailing zeros)."""
        return f"{self.name}{self.op}{self.bound:.15g}"


def parse_constraint(text: str) -> Constraint:
    """A constraint from ``<name><op><number>`` (module docstring).

    Raises:
        UserError: not of that form, or a name that is neither a measured cost nor a validation metric (the message
            lists what is allowed).
    """
    found = _GRAMMAR.match(text or "")
    if found is None:
        raise UserError(f"constraint {text!r} is not <name><op><number> with op one of {', '.join(OPS)} (e.g. "
                        f"gflops<=2); names: {allowed_text()}")
    name, op, number = found.groups()
    if name not in allowed_names():
        import difflib

        close = difflib.get_close_matches(name, sorted(allowed_names()), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"constraint {text!r} names {name!r}, which is neither a measured cost nor a validation "
                        f"metric{hint}; names: {allowed_text()}")
    return Constraint(name, op, float(number))


@dataclass(frozen=True)
class Chosen:
    """The trial a constrained promotion chose: its ids, its primary objective and its value of each constraint's
    name."""

    trial_id: str
    run_id: str
    objective: float
    values: dict


def constraints_text(constraints: list[Constraint]) -> str:
    return ", ".join(c.text() for c in constraints)


def choose(sweep, constraints: list[Constraint]) -> Chosen:
    """The best complete trial of ``sweep`` by its primary objective among those meeting every constraint (the
    sweep's ranking order, so ties go as its leaderboard has them).

    Raises:
        UserError: the sweep has no complete trial, none of its complete trials recorded a constraint's name, or no
            complete trial meets every constraint (the message names the closest).
    """
    done = {t.run_id for t in sweep.completed()}
    complete = [t for t in sweep.ranked() if t.run_id in done and math.isfinite(sweep.objective(t))]
    if not complete:
        raise UserError(f"sweep {sweep.name!r} has no complete trial (every epoch run, every fold of a "
                        f"cross-validated sweep) to choose from")
    for c in constraints:
        if not any(math.isfinite(sweep.value(t, c.name)) for t in complete):
            raise UserError(f"no complete trial of sweep {sweep.name!r} recorded {c.name} (a sweep recorded before "
                            f"emotune measured costs has none); names: {allowed_text()}")
    meeting = [t for t in complete if all(c.holds(sweep.value(t, c.name)) for c in constraints)]
    if meeting:
        best = meeting[0]
        return Chosen(best.trial_id, best.run_id, sweep.objective(best),
                      {c.name: sweep.value(best, c.name) for c in constraints})
    closest = min(complete, key=lambda t: sum(c.shortfall(sweep.value(t, c.name)) for c in constraints))
    values = ", ".join(f"{c.name} {_value(sweep.value(closest, c.name))}" for c in constraints)
    raise UserError(f"no complete trial of sweep {sweep.name!r} meets {constraints_text(constraints)} "
                    f"({len(complete)} complete trial(s)); closest: trial {closest.trial_id} ({values}); nothing "
                    f"promoted")


def _value(v: float) -> str:
    return "none" if v is None or not math.isfinite(v) else f"{v:.4g}"
