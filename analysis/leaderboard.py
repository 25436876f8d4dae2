"""Leaderboards of a sweep's trials, ranked by the objective at each trial's best epoch; in a cross-validated sweep,
by the mean over its subject folds (:class:`CV`), trials that finished every fold first; in a sweep with several
objectives (``objectives:``), its Pareto front first (:func:`rank_by_fronts`), as the report's leaderboard does."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

DIM_METRICS = ("val_ccc_valence", "val_ccc_arousal")

#: Trial outcomes, in the order a sweep's summary counts them.
STATUSES = ("complete", "stopped early", "diverged", "errored")


def trial_status(*, errored: bool, diverged: bool, stopped_early: bool, finished: bool = True,
                 reported: bool = True) -> str:
    """The one rule for a trial's outcome, read from Tune's results (the sweep's own leaderboard) or from MLflow
    (reports, comparisons): an error wins over everything (an errored trial is never ranked as a result), then no
    report at all (stopped by a time budget before its first), a diverged loss, a stop before the last epoch (by ASHA
    or a time budget); a trial with none of these that has not ended is running."""
    if errored:
        return "errored"
    if not reported:
        return "no report"
    if diverged:
        return "diverged"
    if stopped_early:
        return "stopped early"
    return "complete" if finished else "running"


@dataclass
class CV:
    """A cross-validated trial's standing: the scores of the folds it finished (in fold order) out of ``k``, and their
    mean and sample sd (the trial's own ``cv_mean`` / ``cv_sd`` once every fold is done; NaN sd below two folds)."""

    k: int
    scores: list[float] = field(default_factory=list)
    mean: float = math.nan
    sd: float = math.nan

    @classmethod
    def of(cls, k: int, scores: Iterable[float], mean: float | None = None, sd: float | None = None) -> "CV":
        """The standing of ``scores``; ``mean`` and ``sd`` as the trial recorded them when it has (else computed)."""
        scores = [float(v) for v in scores]
        if mean is None or not math.isfinite(mean):
            mean = sum(scores) / len(scores) if scores else math.nan
        if sd is None or not math.isfinite(sd):
            sd = statistics.stdev(scores) if len(scores) > 1 else math.nan
        return cls(k, scores, float(mean), float(sd))

    @property
    def done(self) -> int:
        return len(self.scores)

    @property
    def complete(self) -> bool:
        return self.done >= self.k

    def folds_text(self) -> str:
        return f"{self.done}/{self.k}"

    def text(self) -> str:
        """``0.4120 ± 0.0310`` (``0.1130`` for one fold, ``-`` for none)."""
        if not self.scores:
            return "-"
        return fmt_metric(self.mean) + (f" ± {fmt_metric(self.sd)}" if math.isfinite(self.sd) else "")


def cv_rank_key(cv: CV | None, status: str, mode: str) -> tuple:
    """Where a CV trial ranks: trials that finished every fold first, by their mean; then the others by the folds they
    finished (most first) and the mean of those; then trials without a finished fold; errored trials last."""
    sign = -1.0 if mode == "max" else 1.0
    if cv is None or status == "errored":
        return (3, 0, 0.0)
    if not cv.scores or math.isnan(cv.mean):
        return (2, 0, 0.0)
    if cv.complete and status == "complete":
        return (0, 0, sign * cv.mean)
    return (1, -cv.done, sign * cv.mean)


def near_best(cvs: list[CV | None], statuses: list[str], mode: str) -> list[bool]:
    """Which trials are within one sd of the best: complete trials whose mean is within the best complete trial's sd
    of the best mean (the best itself included). The best's sd is the scale: a difference smaller than the spread of
    the best configuration's own fold scores is no evidence that it is better."""
    complete = [(i, cv) for i, (cv, s) in enumerate(zip(cvs, statuses))
                if cv is not None and cv.complete and s == "complete" and math.isfinite(cv.mean)]
    marks = [False] * len(cvs)
    if not complete:
        return marks
    _, best = (max if mode == "max" else min)(complete, key=lambda ic: ic[1].mean)
    sd = best.sd if math.isfinite(best.sd) else 0.0
    for i, cv in complete:
        marks[i] = abs(cv.mean - best.mean) <= sd
    return marks


#: The marker of a trial within one sd of the best (:func:`near_best`), and the note that explains it.
NEAR_MARK = "≈"
NEAR_NOTE = ("≈: trials that finished every fold whose mean is within one sd (the best trial's sd over folds) of "
             "the best mean")


@dataclass
class Row:
    trial_id: str
    params: dict[str, Any]
    epochs_run: int
    best_epoch: int
    objective: float
    dims: dict[str, float]
    status: str
    cv: CV | None = None  # a cross-validated trial's folds
    near: bool = False  # within one sd of the best (:func:`near_best`)
    values: dict[str, float] = field(default_factory=dict)  # several objectives: each one's value at the best epoch
    front: int | None = None  # several objectives: the trial's front in the non-dominated sort (1: the Pareto front)


def _fold_scores(df, k: int) -> list[float]:
    """The scores of the folds a CV trial finished, from its reports: ``fold_best`` at each fold's last report (the one
    that counts the fold as done)."""
    if df is None or "fold" not in df or "folds_done" not in df or "fold_best" not in df:
        return []
    ended = df[df["folds_done"] == df["fold"]].dropna(subset=["fold_best"])
    by_fold = {int(f): float(v) for f, v in zip(ended["fold"], ended["fold_best"])}  # a retried fold: its last report
    return [by_fold[f] for f in sorted(by_fold) if f <= k]


def cv_rows_from_results(results, metric: str, mode: str, params: Iterable[str], folds: int) -> list[Row]:
    """One row per trial of a cross-validated sweep's Tune results, ranked by :func:`cv_rank_key`, with the within
    one sd marks (:func:`near_best`). ``epochs_run`` counts fold-epochs; ``dims`` are the pooled out-of-fold CCCs."""
    params = list(params)
    rows = []
    for result in results:
        df = result.metrics_dataframe
        config = result.config or {}
        last = result.metrics or {}
        trial_id = last.get("trial_id", "?")
        scores = _fold_scores(df, folds)
        reported = df is not None and metric in df and not df[metric].dropna().empty
        diverged = bool(reported and "diverged" in df and (df["diverged"] == 1).any())
        done = int(last.get("folds_done", len(scores)) or 0)
        status = trial_status(errored=result.error is not None, diverged=diverged, stopped_early=done < folds,
                              reported=reported)
        complete = done >= folds and len(scores) >= folds
        cv = CV.of(folds, scores, last.get("cv_mean") if complete else None, last.get("cv_sd") if complete else None)
        dims = {d: float(last[f"cv_pooled_{d}"]) for d in DIM_METRICS if complete and f"cv_pooled_{d}" in last}
        epochs = int(last.get("fold_epochs", 0) or 0) if reported else 0
        rows.append(Row(trial_id, {p: config.get(p) for p in params}, epochs, 0,
                        cv.mean if complete and status == "complete" else math.nan, dims, status, cv))
    rows.sort(key=lambda r: cv_rank_key(r.cv, r.status, mode))
    for row, mark in zip(rows, near_best([r.cv for r in rows], [r.status for r in rows], mode)):
        row.near = mark
    return rows


def rows_from_results(results, metric: str, mode: str, params: Iterable[str], max_epochs: int,
                      epoch_key: str = "epoch", folds: int = 0,
                      objectives: tuple[tuple[str, str], ...] = ()) -> list[Row]:
    """One row per trial of a Tune ``ResultGrid`` (or a list of Results), best first (a cross-validated sweep's,
    ``folds`` > 0: :func:`cv_rows_from_results`; a sweep with two or three ``objectives`` ((metric, mode) pairs, the
    primary one first): its Pareto front first, :func:`rank_by_fronts`)."""
    if folds:
        return cv_rows_from_results(results, metric, mode, params, folds)
    several = len(objectives) > 1
    params = list(params)
    rows = []
    for result in results:
        df = result.metrics_dataframe
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id", "?")
        if df is None or metric not in df or df[metric].dropna().empty:
            status = trial_status(errored=result.error is not None, diverged=False, stopped_early=False,
                                  reported=False)
            rows.append(Row(trial_id, {p: config.get(p) for p in params}, 0, 0, math.nan, {}, status))
            continue
        df = df.dropna(subset=[metric])
        best = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
        epochs = int(df[epoch_key].max())
        diverged = "diverged" in df and (df["diverged"] == 1).any()
        status = trial_status(errored=result.error is not None, diverged=bool(diverged),
                              stopped_early=epochs < max_epochs)
        values = {name: _objective_value(df, best, name, metric) for name, _ in objectives} if several else {}
        rows.append(Row(trial_id, {p: config.get(p) for p in params}, epochs, int(best[epoch_key]), float(best[metric]),
                        {d: float(best[d]) for d in DIM_METRICS if d in best}, status, values=values))
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (math.isnan(r.objective), sign * (r.objective if not math.isnan(r.objective) else 0.0)))
    return rank_by_fronts(rows, objectives) if several else rows


def _objective_value(df, best, name: str, metric: str) -> float:
    """A trial's value of objective ``name`` from its Tune reports ``df``, as the report reads it from MLflow
    (``analysis.sweeps.Sweep.value``): the primary ``metric`` and any other metric at the best epoch ``best``; a cost
    as measured (``analysis.sweeps.run_costs``): as last reported, ``peak_mem_mb`` the largest report, ``train_s`` the
    sum of every report's ``train_time_s`` (where logged)."""
    from trainables.reports import COST_KEYS

    if name not in COST_KEYS or name == metric:
        value = best.get(name) if name in best else None
    elif name not in df or df[name].dropna().empty:
        value = None
    elif name == "peak_mem_mb":
        value = df[name].max()
    elif name == "train_s" and "train_time_s" in df and not df["train_time_s"].dropna().empty:
        value = df["train_time_s"].sum()
    else:
        value = df[name].dropna().iloc[-1]
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def rank_by_fronts(rows: list[Row], objectives: tuple[tuple[str, str], ...]) -> list[Row]:
    """``rows`` (ranked by the primary objective) with the Pareto front first, the rule of the report's leaderboard
    (``analysis.report.multi_objective_leaderboard_table``): the complete trials with a finite value of every
    objective are sorted into fronts over the objectives (:func:`analysis.pareto.non_dominated_sort`; each row's
    ``front``, 1 on the Pareto front), listed by front and within a front by the primary objective (ties keep the
    order they had); then every other trial (stopped early, diverged, errored, or missing a value) in the order it
    had. Only complete trials are placed: a trial stopped early is a model trained less, its early CCC no measure of
    what its configuration reaches, so a front drawn with it would be a front of unequal budgets."""
    from analysis.pareto import minimised, non_dominated_sort

    modes = [m for _, m in objectives]
    placed = [r for r in rows if r.status == "complete"
              and all(math.isfinite(r.values.get(n, math.nan)) for n, _ in objectives)]
    points = [minimised([r.values[n] for n, _ in objectives], modes) for r in placed]
    for number, members in enumerate(non_dominated_sort(points), 1):
        for i in members:
            placed[i].front = number
    ordered = sorted(range(len(placed)), key=lambda i: (placed[i].front, points[i][0], i))
    taken = {id(r) for r in placed}
    return [placed[i] for i in ordered] + [r for r in rows if id(r) not in taken]


def format_leaderboard(rows: list[Row], metric: str, steps_label: str = "epochs") -> str:
    """A plain-text table: rank, trial, key params, epochs run, validation CCC per dimension and the objective (a
    cross-validated sweep's: :func:`format_cv_leaderboard`)."""
    if not rows:
        return "(no trials)"
    if any(r.cv is not None for r in rows):
        return format_cv_leaderboard(rows, metric)
    if any(r.values for r in rows):
        return format_multi_objective_leaderboard(rows, steps_label)
    params, param_cells = _param_columns(rows)
    head = ["rank", "trial", *params, steps_label, "status", "ccc_valence", "ccc_arousal", metric]
    body = [[str(i), r.trial_id, *param_cells(r), str(r.epochs_run), r.status, *_dim_cells(r), fmt_metric(r.objective)]
            for i, r in enumerate(rows, 1)]
    return _text_table(head, body)


def _param_columns(rows: list[Row]):
    """The key params' names and a row's cells for them, each column in one format (:func:`column_format`)."""
    params = list(rows[0].params)
    fmts = {p: column_format([r.params[p] for r in rows]) for p in params}
    return params, lambda r: [fmts[p](r.params[p]) for p in params]


def _dim_cells(r: Row) -> list[str]:
    return [fmt_metric(r.dims.get("val_ccc_valence")), fmt_metric(r.dims.get("val_ccc_arousal"))]


def _text_table(head: list[str], body: list[list[str]], note: str | None = None) -> str:
    """Columns padded to their widest cell, two spaces apart, the head underlined; ``note`` below."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))  # as wide as the widest row, not only the head
    out = [line, rule, *("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body)]
    return "\n".join([*out, *([note] if note else [])])


#: The note under a multi-objective leaderboard: what its ``front`` column means.
FRONT_NOTE = ("front: the trial's front in the non-dominated sort of the complete trials over the objectives (1, "
              "marked *: on the Pareto front, no other trial at least as good in every objective and better in "
              "one); the Pareto front first, then each later front, then the trials not placed (-)")


def format_multi_objective_leaderboard(rows: list[Row], steps_label: str = "epochs") -> str:
    """The leaderboard of a sweep with several objectives (:func:`rank_by_fronts`): rank, the trial's front (``1*``
    on the Pareto front), trial, key params, epochs run, status, validation CCC per dimension and every objective at
    the trial's best epoch, then :data:`FRONT_NOTE`."""
    params, param_cells = _param_columns(rows)
    names = list(next(r.values for r in rows if r.values))
    head = ["rank", "front", "trial", *params, steps_label, "status", "ccc_valence", "ccc_arousal", *names]
    body = []
    for i, r in enumerate(rows, 1):
        front = "-" if r.front is None else f"{r.front}*" if r.front == 1 else str(r.front)
        body.append([str(i), front, r.trial_id, *param_cells(r), str(r.epochs_run), r.status, *_dim_cells(r),
                     *(_objective_cell(n, r.values.get(n)) for n in names)])
    return _text_table(head, body, FRONT_NOTE)


def _objective_cell(name: str, v: float | None) -> str:
    """A metric (``val_...``) as every metric cell (4 decimals); a cost with 4 significant digits (GFLOPs of a tiny
    model are 1e-3, seconds 1e2), as the report's fronts print them."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-" if v is None else "nan"
    return fmt_metric(v) if name.startswith("val_") else f"{float(v):.4g}"


def format_cv_leaderboard(rows: list[Row], metric: str) -> str:
    """The leaderboard of a cross-validated sweep: rank, the within-one-sd mark, trial, key params, folds done,
    fold-epochs run, status, the pooled out-of-fold CCC per dimension and the objective's mean ± sd over folds."""
    params, param_cells = _param_columns(rows)
    head = ["rank", NEAR_MARK, "trial", *params, "folds", "fold-epochs", "status", "pooled ccc_valence",
            "pooled ccc_arousal", f"{metric} mean ± sd"]
    body = []
    for i, r in enumerate(rows, 1):
        cv = r.cv or CV(0)
        body.append([str(i), NEAR_MARK if r.near else "", r.trial_id, *param_cells(r), cv.folds_text(),
                     str(r.epochs_run), r.status, *_dim_cells(r), cv.text()])
    return _text_table(head, body, NEAR_NOTE)


def fmt_metric(v: Any) -> str:
    """A metric cell: always 4 decimals fixed (``0.7240``, ``-0.0029``), so a column reads at one glance."""
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{float(v):.4f}"


def column_format(values: Iterable[Any]):
    """One formatter for a whole column of parameter values, chosen from all of them.

    A column of floats is written in one format: scientific with 3 significant decimals (``8.091e-04``) when any
    non-zero value is below 1e-2 or at least 1e4 in size (learning rates), else fixed with 4 decimals (``0.7500``).
    Integers, strings and booleans are written as they are; a missing value is ``-``, NaN is ``nan``.
    """
    floats = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    scientific = any(v != 0 and not 1e-2 <= abs(v) < 1e4 for v in floats)

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            return f"{v:.3e}" if scientific else f"{v:.4f}"
        return str(v)

    return fmt
