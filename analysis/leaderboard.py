"""Leaderboards of a sweep's trials, ranked by the objective at each trial's best epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

DIM_METRICS = ("val_ccc_valence", "val_ccc_arousal")


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
            status = "errored" if result.error else "no report"  # e.g. stopped by a time budget before its first report
            rows.append(Row(trial_id, {p: config.get(p) for p in params}, 0, 0, math.nan, {}, status))
            continue
        df = df.dropna(subset=[metric])
        best = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
        epochs = int(df[epoch_key].max())
        diverged = "diverged" in df and (df["diverged"] == 1).any()
        status = ("errored" if result.error else "diverged" if diverged
                  else "stopped early" if epochs < max_epochs else "complete")
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
    body = []
    for i, r in enumerate(rows, 1):
        body.append([str(i), r.trial_id, *(_fmt(r.params[p]) for p in params), str(r.epochs_run), r.status,
                     _fmt(r.dims.get("val_ccc_valence")), _fmt(r.dims.get("val_ccc_arousal")), _fmt(r.objective)])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
    return str(v)
