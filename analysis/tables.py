"""Paper-style tables of a sweep: the table the source paper printed for the study that ran, or one summary table per
searched parameter for any other study. A table is plain data (``Table``); ``to_html`` and ``to_text`` write it with
one number format per column (``analysis.leaderboard``)."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from analysis.leaderboard import column_format, fmt_metric
from analysis.sweeps import Sweep, Trial


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    metric_columns: tuple[str, ...] = ()  # written with 4 decimals; the others with one format chosen per column
    note: str = ""
    # written with 4 significant digits (costs: GFLOPs of a tiny model are 1e-2, seconds of a large one 1e4)
    significant_columns: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        fmts = []
        for i, col in enumerate(self.columns):
            values = [r[i] for r in self.rows]
            fmts.append(fmt_metric if col in self.metric_columns else fmt_significant
                        if col in self.significant_columns else column_format(values))
        return [[f(v) for f, v in zip(fmts, row)] for row in self.rows]

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.cells())
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return f"<h3>{html.escape(self.title)}</h3>{note}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_text(self) -> str:
        cells = self.cells()
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.cells()]
        return "\n".join(lines)


def fmt_significant(v: Any) -> str:
    """A cost cell: 4 significant digits (``0.01501``, ``1193``, ``2.4e+04``); ``-`` when missing."""
    if v is None or (isinstance(v, str) and v in ("", "-")):
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{float(v):.4g}"


def _finished(sweep: Sweep) -> list[Trial]:
    """Trials with a finite objective that neither errored nor diverged: what a paper's table would count."""
    return [t for t in sweep.trials if t.status in ("complete", "stopped early", "running")
            and not math.isnan(sweep.objective(t))]


def _best_of(sweep: Sweep, trials: list[Trial]) -> Trial:
    pick = max if sweep.mode == "max" else min
    return pick(trials, key=sweep.objective)


def grouped(sweep: Sweep, keys: list[str], title: str, note: str = "") -> Table:
    """One row per combination of ``keys`` the sweep tried: trials, the best trial's objective, its CCC and RMSE per
    dimension, and the mean training time of the group."""
    groups: dict[tuple, list[Trial]] = {}
    for t in _finished(sweep):
        groups.setdefault(tuple(t.params.get(k) for k in keys), []).append(t)
    metrics = ("val_ccc_valence", "val_ccc_arousal", "val_rmse_valence", "val_rmse_arousal")
    cols = [*keys, "trials", f"best {sweep.metric}", "ccc_valence", "ccc_arousal", "rmse_valence", "rmse_arousal",
            "train time (s)"]
    rows = []
    for combo, trials in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        best = _best_of(sweep, trials)
        rows.append([*combo, len(trials), sweep.objective(best),
                     *(best.at_best(m, sweep.metric, sweep.mode) for m in metrics),
                     sum(t.train_time_s for t in trials) / len(trials)])
    return Table(title, cols, rows, metric_columns=(f"best {sweep.metric}", "ccc_valence", "ccc_arousal",
                                                    "rmse_valence", "rmse_arousal"), note=note)


def per_parameter(sweep: Sweep, params: Iterable[str] | None = None, bins: int = 4) -> list[Table]:
    """One table per parameter: for each value it took (continuous values binned into ``bins`` equal ranges), the
    number of finished trials, the mean and the best objective."""
    tables = []
    trials = _finished(sweep)
    pick = max if sweep.mode == "max" else min
    for p in (sweep.searched if params is None else params):
        values = [t.params.get(p) for t in trials]
        label = _binner(values, bins)
        groups: dict[Any, list[float]] = {}
        for t, v in zip(trials, values):
            groups.setdefault(label(v), []).append(sweep.objective(t))
        rows = [[k, len(vs), sum(vs) / len(vs), pick(vs)] for k, vs in sorted(groups.items(), key=lambda kv: _order(kv[0]))]
        tables.append(Table(p, [p, "trials", f"mean {sweep.metric}", f"best {sweep.metric}"], rows,
                            metric_columns=(f"mean {sweep.metric}", f"best {sweep.metric}")))
    return tables


def _order(v: Any):
    if isinstance(v, tuple):  # a bin (low, high, text)
        return (0, v[0], "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


class _Bin(tuple):
    def __str__(self) -> str:
        return self[2]


def _binner(values: list[Any], bins: int) -> Callable[[Any], Any]:
    floats = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if len(set(floats)) <= bins or len(floats) != len(values):
        return lambda v: v
    lo, hi = min(floats), max(floats)
    log = lo > 0 and hi / lo > 20  # learning-rate-like ranges are binned on a log scale
    a, b = (math.log(lo), math.log(hi)) if log else (lo, hi)
    edges = [a + (b - a) * i / bins for i in range(bins + 1)]
    edges = [math.exp(e) for e in edges] if log else edges
    fmt = column_format(edges)

    def label(v: float) -> _Bin:
        i = min(bins - 1, max(0, int(sum(v >= e for e in edges[1:-1]))))
        return _Bin((edges[i], edges[i + 1], f"[{fmt(edges[i])}, {fmt(edges[i + 1])}{']' if i == bins - 1 else ')'}"))

    return label


LOSS_KEYS = ("w_ccc", "w_mse", "w_ce", "w_ncce", "w_ccc_arousal", "w_ce_arousal")


def study_tables(sweep: Sweep) -> list[Table]:
    """The tables of the study that ran: paper 000 Table II for ``ssts_strides``, paper 003 Table 2 for
    ``sequence_windows``, paper 001 Tables III-IV for ``losses_augment``, else one table per searched parameter."""
    if sweep.space == "ssts_strides":
        return [grouped(sweep, ["ssts_stride", "registration"], "SSTS stride x registration (paper 000, Table II)",
                        "best trial of each combination; training time is the mean over its trials")]
    if sweep.space == "sequence_windows":
        return [grouped(sweep, ["window_length", "window_overlap", "label_fusion", "fps"],
                        "Window length x overlap x label fusion x fps (paper 003, Table 2)")]
    if sweep.space == "losses_augment":
        losses = [k for k in LOSS_KEYS if any(k in t.params for t in sweep.trials)]
        metrics = ("val_ccc_valence", "val_ccc_arousal")
        rows = [[*(t.params.get(k) for k in losses), sweep.objective(t),
                 *(t.at_best(m, sweep.metric, sweep.mode) for m in metrics)]
                for t in sweep.ranked() if t in _finished(sweep)]
        table3 = Table("Loss weights (paper 001, Table III)", [*losses, sweep.metric, "ccc_valence", "ccc_arousal"],
                       rows, metric_columns=(sweep.metric, "ccc_valence", "ccc_arousal"),
                       note="one row per finished trial, best first")
        augs = [p for p in sweep.searched if p.startswith("aug_")]
        table4 = per_parameter(sweep, augs)
        for t in table4:
            t.title = f"Augmentation {t.title} (paper 001, Table IV)"
        return [table3, *table4]
    return per_parameter(sweep)
