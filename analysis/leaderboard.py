"""Leaderboards of a sweep's trials, ranked by the objective at each trial's best epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass
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
class Row:
    trial_id: str
    params: dict[str, Any]
    epochs_run: int
    best_epoch: int
    objective: float
    dims: dict[str, float]
    status: str


def rows_from_results(results, metric: str, mode: str, params: Iterable[str], max_epochs: int,
                      epoch_key: str = "epoch") -> list[Row]:
    """One row per trial of a Tune ``ResultGrid`` (or a list of Results), best first."""
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
    """A plain-text table: rank, trial, key params, epochs run, validation CCC per dimension and the objective."""
    if not rows:
        return "(no trials)"
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
