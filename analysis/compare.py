"""``emotune compare A B ...``: sweeps side by side (possibly from different MLflow experiments of one tracking store):
each one's best trial with its metrics and configuration, the settings in which the best configurations differ, each
one's Pareto front of its objective against GFLOPs per window with its hypervolume (over one reference point when the
sweeps share their objective: :func:`analysis.fronts.shared_fronts`), and a figure of each sweep's best objective so
far against the number of trials beside the sweeps' fronts overlaid.

Cross-validated sweeps compare too, with one-split sweeps or with each other: a row says how each sweep validated; a
CV sweep's best trial is the best that finished every fold, its objective the mean over folds (with the sd over folds
beside it), its per-dimension metrics those of its pooled out-of-fold predictions and its best epoch the median over
folds. The notes under the table say what the figures of differently validated sweeps do and do not tell."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from analysis import figures
from analysis.fronts import shared_fronts
from analysis.leaderboard import column_format, fmt_metric
from analysis.sweeps import Sweep, load_sweep
from trainables.errors import UserError

METRICS = ("val_ccc_valence", "val_ccc_arousal", "val_rmse_valence", "val_rmse_arousal")
# Keys of a trial's config that are plumbing, not a setting a reader compares (a CV sweep's folds: the row
# ``validation`` says how each sweep validated).
IGNORED = ("trial_id", "cv")
PARETO_TITLE = "Pareto front: objective against gflops (complete trials)"
PARETO_NOTE = ("Hypervolume: the region a sweep's front dominates up to its reference point (larger is better); the "
               "sweeps share one when they share their objective: 0, or the worst value below it, for a maximised "
               "objective, and 1.1 x the largest gflops of any sweep.")


def _short(v: Any, width: int = 48) -> Any:
    if isinstance(v, (dict, list)):
        v = str(v)
    if isinstance(v, str) and len(v) > width:
        return "..." + v[-(width - 3):]
    return v


def comparison(sweeps: list[Sweep]) -> list[tuple[str, list[tuple[str, list[Any], bool]]]]:
    """Sections of the side-by-side table: (title, [(row label, one value per sweep, is_metric)])."""
    bests = [s.best() for s in sweeps]
    overview = [
        ("experiment", [s.experiment for s in sweeps], False),
        ("study", [s.space for s in sweeps], False),
        ("parent run", [s.parent_run_id for s in sweeps], False),
        ("objective", [f"{s.metric} ({s.mode})" for s in sweeps], False),
        ("validation", [s.validation for s in sweeps], False),
        ("trials", [len(s.trials) for s in sweeps], False),
        ("finished", [sum(t.status in ("complete", "stopped early") for t in s.trials) for s in sweeps], False),
        *([("every fold done", [sum(t.cv_complete for t in s.trials) if s.folds else None for s in sweeps], False)]
          if any(s.folds for s in sweeps) else []),
        ("best trial", [b.trial_id if b else "none" for b in bests], False),
    ]
    cv = any(s.folds for s in sweeps)
    metrics = [("best objective", [s.objective(b) if b else math.nan for s, b in zip(sweeps, bests)], True)]
    if cv:  # one-split sweeps have no spread over folds
        metrics.append(("sd over folds", [b.cv.sd if b and b.cv else None for b in bests], True))
    for m in METRICS:
        metrics.append((m, [b.at_best(m, s.metric, s.mode) if b else math.nan for s, b in zip(sweeps, bests)], True))
    metrics.append(("best epoch" + (" (CV: median over folds)" if cv else ""),
                    [_best_epoch(s, b) for s, b in zip(sweeps, bests)], False))
    metrics.append(("train time (s)", [b.train_time_s if b else None for b in bests], False))

    fronts, _ = shared_fronts(sweeps)
    pareto = [("complete trials", [len(f.trials) for f in fronts], False),
              ("on the front", [", ".join(f.member_ids()) or "none" for f in fronts], False),
              ("hypervolume", [f.hypervolume if f.trials else None for f in fronts], False),
              ("reference point", [f.reference_text().replace(" = ", "=").replace(", ", ",") for f in fronts], False)]

    searched = list(dict.fromkeys(k for s in sweeps for k in (*s.searched, *s.overrides)))
    config = [(k, [_short(b.params.get(k)) if b else None for b in bests], False) for k in searched]
    keys = sorted({k for b in bests if b for k in b.params} - set(searched) - set(IGNORED))
    differ = [(k, [_short(b.params.get(k)) if b else None for b in bests], False) for k in keys
              if len({repr(b.params.get(k)) if b else None for b in bests}) > 1]
    return [("Sweeps", overview), ("Best trial's metrics", metrics), (PARETO_TITLE, pareto),
            ("Best configuration (searched or pinned parameters)", config),
            ("Other settings that differ between the best configurations", differ)]


def _best_epoch(sweep: Sweep, trial) -> Any:
    if trial is None:
        return None
    if trial.cv is not None:  # a median of epoch counts: 1.5 between 1 and 2
        return None if trial.best_epoch_median is None else f"{trial.best_epoch_median:g}"
    return trial.best_epoch(sweep.metric, sweep.mode)


def notes(sweeps: list[Sweep]) -> list[str]:
    """What the side-by-side figures do not say by themselves: different objectives, different validation."""
    out = []
    if len({s.metric for s in sweeps}) > 1:
        out.append("the sweeps optimise different objectives; their best values are not comparable")
    cv = [s for s in sweeps if s.folds]
    one = [s for s in sweeps if not s.folds]
    if cv and one:
        out.append(f"{', '.join(s.name for s in cv)}: cross-validated (best objective = mean over subject folds, "
                   f"val_* = pooled out-of-fold predictions, train time over every fold); "
                   f"{', '.join(s.name for s in one)}: one split (best objective and val_* on its validation "
                   f"subjects). Both estimate the same objective on different validation subjects: compare the "
                   f"configurations, and read a difference smaller than the sd over folds as none")
    if len(cv) > 1 and len({json.dumps(s.fold_subjects) for s in cv}) > 1:
        out.append(f"{', '.join(s.name for s in cv)} use different subject folds: their fold scores are not paired")
    return out


def _cells(values: list[Any], metric: bool) -> list[str]:
    fmt = fmt_metric if metric else column_format(values)
    return [fmt(v) for v in values]


def to_text(sweeps: list[Sweep], sections) -> str:
    head = ["", *(s.name for s in sweeps)]
    rows: list[list[str]] = []
    for title, entries in sections:
        rows.append([f"[{title}]", *([""] * len(sweeps))])
        if not entries:
            rows.append(["  (none)", *([""] * len(sweeps))])
        rows += [[f"  {label}", *_cells(values, metric)] for label, values, metric in entries]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def to_markdown(sweeps: list[Sweep], sections, plot: str | None) -> str:
    out = ["# Sweep comparison", "", *(f"Note: {n}\n" for n in notes(sweeps))]
    for title, entries in sections:
        out += [f"## {title}", "", "| | " + " | ".join(s.name for s in sweeps) + " |",
                "|---|" + "---|" * len(sweeps)]
        out += ["| " + label + " | " + " | ".join(_cells(values, metric)) + " |" for label, values, metric in entries]
        out.append("")
    if plot:
        out += ["## Best objective so far and Pareto fronts", "",
                f"![best objective so far against trials]({plot})", "",
                "Left: each sweep's best objective so far against trials. Right: each sweep's complete trials by "
                "objective against gflops per window, its Pareto front solid and joined, dominated trials faded.", "",
                PARETO_NOTE, ""]
    return "\n".join(out)


def to_html(sweeps: list[Sweep], sections, plot: str | None) -> str:
    from analysis.report import CSS

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep comparison</title>",
             f"<style>{CSS}</style></head><body><h1>Sweep comparison</h1>",
             *(f"<p class='note'>note: {html.escape(n)}</p>" for n in notes(sweeps))]
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(s.name)}</th>" for s in sweeps) + "</tr>"
    for title, entries in sections:
        body = "".join("<tr><th>" + html.escape(label) + "</th>" + "".join(
            f"<td>{html.escape(c)}</td>" for c in _cells(values, metric)) + "</tr>" for label, values, metric in entries)
        parts.append(f"<h2>{html.escape(title)}</h2><table>{head}{body}</table>")
    if plot:
        parts.append(f"<h2>Best objective so far and Pareto fronts</h2><p class='note'>left: each sweep's best "
                     f"objective so far against trials; right: each sweep's complete trials by objective against "
                     f"gflops per window, its Pareto front solid and joined, dominated trials faded. "
                     f"{html.escape(PARETO_NOTE)}</p>"
                     f"<img src='{html.escape(plot)}' alt='best objective so far and Pareto fronts'>")
    return "".join(parts) + "</body></html>"


def compare(client, refs: list[str], out: str | Path | None = None, experiment: str | None = None) -> str:
    """The comparison of the sweeps ``refs`` (names or parent run ids) as printed text; with ``out``, also
    ``compare.png``, ``compare.md`` and ``compare.html`` there (their paths end the text)."""
    if len(refs) < 2:
        raise UserError(f"compare needs two or more sweeps, got {len(refs)}")
    sweeps = [load_sweep(client, ref, experiment) for ref in refs]
    ids = [s.parent_run_id for s in sweeps]
    if len(set(ids)) < len(ids):
        raise UserError(f"the same sweep is named twice: {', '.join(refs)}")
    sections = comparison(sweeps)
    text = to_text(sweeps, sections)
    for note in notes(sweeps):
        text += f"\nnote: {note}"
    if out is not None:
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        plot = figures.comparison(sweeps, shared_fronts(sweeps)[0], out / "compare.png")
        (out / "compare.md").write_text(to_markdown(sweeps, sections, plot.name), encoding="utf-8")
        (out / "compare.html").write_text(to_html(sweeps, sections, plot.name), encoding="utf-8")
        text += f"\nplot: {plot}\nsummary: {out / 'compare.md'}, {out / 'compare.html'}"
    return text
