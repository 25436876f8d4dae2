"""Leaderboards of a sweep's trials, ranked by the objective at each trial's best epoch; in a cross-validated sweep,
by the mean over its subject folds (:class:`CV`), trials that finished every fold first."""
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
                      epoch_key: str = "epoch", folds: int = 0) -> list[Row]:
    """One row per trial of a Tune ``ResultGrid`` (or a list of Results), best first (a cross-validated sweep's,
    ``folds`` > 0: :func:`cv_rows_from_results`)."""
    if folds:
        return cv_rows_from_results(results, metric, mode, params, folds)
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
        rows.append(Row(trial_id, {p: config.get(p) for p in params}, epochs, int(best[epoch_key]), float(best[metric]),
                        {d: float(best[d]) for d in DIM_METRICS if d in best}, status))
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (math.isnan(r.objective), sign * (r.objective if not math.isnan(r.objective) else 0.0)))
    return rows


def format_leaderboard(rows: list[Row], metric: str, steps_label: str = "epochs") -> str:
    """A plain-text table: rank, trial, key params, epochs run, validation CCC per dimension and the objective (a
    cross-validated sweep's: :func:`format_cv_leaderboard`)."""
    if not rows:
        return "(no trials)"
    if any(r.cv is not None for r in rows):
        return format_cv_leaderboard(rows, metric)
    params = list(rows[0].params)
    head = ["rank", "trial", *params, steps_label, "status", "ccc_valence", "ccc_arousal", metric]
    param_fmt = {p: column_format([r.params[p] for r in rows]) for p in params}
    body = []
    for i, r in enumerate(rows, 1):
        body.append([str(i), r.trial_id, *(param_fmt[p](r.params[p]) for p in params), str(r.epochs_run), r.status,
                     fmt_metric(r.dims.get("val_ccc_valence")), fmt_metric(r.dims.get("val_ccc_arousal")),
                     fmt_metric(r.objective)])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


def format_cv_leaderboard(rows: list[Row], metric: str) -> str:
    """The leaderboard of a cross-validated sweep: rank, the within-one-sd mark, trial, key params, folds done,
    fold-epochs run, status, the pooled out-of-fold CCC per dimension and the objective's mean ± sd over folds."""
    params = list(rows[0].params)
    head = ["rank", NEAR_MARK, "trial", *params, "folds", "fold-epochs", "status", "pooled ccc_valence",
            "pooled ccc_arousal", f"{metric} mean ± sd"]
    param_fmt = {p: column_format([r.params[p] for r in rows]) for p in params}
    body = []
    for i, r in enumerate(rows, 1):
        cv = r.cv or CV(0)
        body.append([str(i), NEAR_MARK if r.near else "", r.trial_id, *(param_fmt[p](r.params[p]) for p in params),
                     cv.folds_text(), str(r.epochs_run), r.status, fmt_metric(r.dims.get("val_ccc_valence")),
                     fmt_metric(r.dims.get("val_ccc_arousal")), cv.text()])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join([*out, NEAR_NOTE])


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
