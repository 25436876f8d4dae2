"""``emotune report``: one HTML page about a sweep (leaderboard, hyperparameter importance, parallel coordinates,
learning curves with ASHA's stops, objective against training time, the study's paper-style tables) with its PNG
figures beside it in ``figures/``, all logged to the sweep's MLflow parent run under ``report/``."""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

from analysis import figures
from analysis.leaderboard import column_format, fmt_metric
from analysis.sweeps import Sweep, load_sweep
from analysis.tables import Table, study_tables

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#eee}
img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:90%}"""


@dataclass
class Importance:
    values: dict[str, float]  # parameter -> fANOVA importance (they sum to 1), most important first
    note: str = ""  # why there are none (too few trials, no study)


def importance(sweep: Sweep, optuna_storage: str) -> Importance:
    """fANOVA importance of each searched parameter for the objective, from the sweep's Optuna study (study name =
    sweep name) in ``optuna_storage``. Only completed Optuna trials count; parameters that took one value have none.
    Fewer than two completed trials, or a missing study, give no values and a note saying why."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if optuna_storage.startswith("sqlite:///") and not Path(optuna_storage[len("sqlite:///"):]).is_file():
        # Optuna would create an empty database there; say where the study was looked for instead.
        return Importance({}, f"no Optuna storage at {optuna_storage} (give the sweep's --optuna-storage)")
    try:
        study = optuna.load_study(study_name=sweep.name, storage=optuna_storage)
    except KeyError:
        return Importance({}, f"no Optuna study named {sweep.name!r} in {optuna_storage}")
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return Importance({}, f"{len(done)} completed Optuna trial(s): fANOVA needs at least 2")
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every parameter took a single value
        return Importance({}, f"fANOVA could not be computed: {err}")
    return Importance(dict(values), "" if values else "no parameter varied across the completed trials")


def leaderboard_table(sweep: Sweep) -> Table:
    rows = []
    for rank, t in enumerate(sweep.ranked(), 1):
        rows.append([rank, t.trial_id, *(t.params.get(p) for p in sweep.searched), t.epochs_run, t.status,
                     t.at_best("val_ccc_valence", sweep.metric, sweep.mode),
                     t.at_best("val_ccc_arousal", sweep.metric, sweep.mode), sweep.objective(t), t.train_time_s])
    cols = ["rank", "trial", *sweep.searched, "epochs", "status", "ccc_valence", "ccc_arousal", sweep.metric,
            "train time (s)"]
    return Table("Leaderboard", cols, rows, metric_columns=("ccc_valence", "ccc_arousal", sweep.metric),
                 note=f"objective {sweep.metric} ({sweep.mode}) at each trial's best epoch")


def importance_table(imp: Importance, metric: str) -> Table:
    return Table(f"Hyperparameter importance for {metric} (fANOVA)", ["parameter", "importance"],
                 [[k, v] for k, v in imp.values.items()], metric_columns=("importance",), note=imp.note)


def write_report(client, ref: str, out: str | Path | None, optuna_storage: str, experiment: str | None = None,
                 log_to_mlflow: bool = True) -> tuple[Path, Sweep]:
    """Write ``report.html`` and ``figures/*.png`` for the sweep ``ref`` into ``out`` (default: beside the sweep's
    Ray results, ``<results>-report``, else ``./<sweep>-report``) and log them to the parent run under ``report/``."""
    sweep = load_sweep(client, ref, experiment)
    if out is None:
        out = Path(f"{sweep.results_dir}-report") if sweep.results_dir and "://" not in sweep.results_dir \
            else Path(f"{sweep.name}-report")
    out = Path(out).resolve()
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):  # a report written again leaves no figure of an earlier one
        old.unlink()

    imp = importance(sweep, optuna_storage)
    sections: list[str] = []
    board = leaderboard_table(sweep)
    sections.append(board.to_html())
    sections.append(importance_table(imp, sweep.metric).to_html())
    figs: list[tuple[str, Path]] = []
    if imp.values:
        figs.append(("Hyperparameter importance", figures.importance(imp.values, sweep.metric,
                                                                     fig_dir / "importance.png")))
    finished = [t for t in sweep.trials if not math.isnan(sweep.objective(t))]
    if finished:
        if sweep.searched:
            figs.append(("Parallel coordinates", figures.parallel_coordinates(sweep, fig_dir / "parallel.png")))
        figs.append(("Learning curves (x: the last epoch of a trial ASHA stopped early)",
                     figures.learning_curves(sweep, fig_dir / "learning_curves.png")))
        figs.append(("Objective against training time", figures.objective_vs_time(sweep, fig_dir / "time.png")))
    for title, path in figs:
        sections.append(f"<h3>{html.escape(title)}</h3><img src='figures/{path.name}' alt='{html.escape(title)}'>")
    sections.append("<h2>Study tables</h2>")
    sections.extend(t.to_html() for t in study_tables(sweep))

    counts = {s: sum(t.status == s for t in sweep.trials) for s in figures.STATUS_COLORS}
    best = sweep.best()
    summary = [("sweep", sweep.name), ("experiment", sweep.experiment), ("study", sweep.space),
               ("parent run", sweep.parent_run_id), ("objective", f"{sweep.metric} ({sweep.mode})"),
               ("trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"),
               ("best trial", f"{best.trial_id} ({fmt_metric(sweep.objective(best))}, run {best.run_id})"
                if best else "none"),
               ("pinned", ", ".join(f"{k}={v}" for k, v in sweep.overrides.items()) or "-"),
               ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Sweep {html.escape(sweep.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>Sweep {html.escape(sweep.name)}</h1><table>{head}</table>"
            + "".join(sections) + "</body></html>")
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    if log_to_mlflow:
        client.log_artifact(sweep.parent_run_id, str(report), artifact_path="report")
        client.log_artifacts(sweep.parent_run_id, str(fig_dir), artifact_path="report/figures")
    return report, sweep


__all__ = ["Importance", "importance", "leaderboard_table", "write_report", "column_format"]
