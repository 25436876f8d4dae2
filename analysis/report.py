"""``emotune report``: one HTML page about a sweep (leaderboard, Pareto fronts, hyperparameter importance, parallel
coordinates, learning curves with ASHA's stops, objective against training time, the study's paper-style tables) with
its PNG figures beside it in ``figures/``, all logged to the sweep's MLflow parent run under ``report/``.

The Pareto section (:mod:`analysis.fronts`) places the complete trials by the objective against each measured cost
(or, for a study with several objectives, by those objectives), marks the non-dominated ones, and gives each front's
table and hypervolume with the reference point it was taken against. A sweep with several objectives lists its
Pareto front first in its leaderboard.

A cross-validated sweep's page has a section of its own: the per-fold scores of its top trials (a strip plot) and
the fold-epochs racing saved (ASHA stopping trials before their last fold); its leaderboard shows each trial's mean ±
sd over folds, the folds it finished and the trials within one sd of the best (:mod:`analysis.leaderboard`)."""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

from analysis import figures
from analysis.pretraining import pretraining_section
from analysis.fronts import COST_FRONTS, Front, front_rows, objective_ranks, sweep_fronts
from analysis.leaderboard import NEAR_MARK, NEAR_NOTE, column_format, fmt_metric
from analysis.sweeps import Sweep, load_sweep
from analysis.tables import Table, study_tables
from trainables.reports import COST_KEYS

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
    # A study with several objectives: the importance for the primary one (the first), which the page names.
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=target)
    except (RuntimeError, ValueError) as err:  # e.g. every parameter took a single value
        return Importance({}, f"fANOVA could not be computed: {err}")
    return Importance(dict(values), "" if values else "no parameter varied across the completed trials")


#: Trials the strip plot of a cross-validated sweep shows (its best, ranked).
STRIP_TRIALS = 10


def leaderboard_table(sweep: Sweep) -> Table:
    if sweep.folds:
        return cv_leaderboard_table(sweep)
    if sweep.multi_objective:
        return multi_objective_leaderboard_table(sweep)
    rows = []
    for rank, t in enumerate(sweep.ranked(), 1):
        rows.append([rank, t.trial_id, *(t.params.get(p) for p in sweep.searched), t.epochs_run, t.status,
                     t.at_best("val_ccc_valence", sweep.metric, sweep.mode),
                     t.at_best("val_ccc_arousal", sweep.metric, sweep.mode), sweep.objective(t), t.train_time_s])
    cols = ["rank", "trial", *sweep.searched, "epochs", "status", "ccc_valence", "ccc_arousal", sweep.metric,
            "train time (s)"]
    return Table("Leaderboard", cols, rows, metric_columns=("ccc_valence", "ccc_arousal", sweep.metric),
                 note=f"objective {sweep.metric} ({sweep.mode}) at each trial's best epoch")


def multi_objective_leaderboard_table(sweep: Sweep) -> Table:
    """The leaderboard of a sweep with several objectives: its Pareto front first. Complete trials by their front in
    the non-dominated sort over the objectives (1: the Pareto front), within a front by the primary objective; then
    the other trials as a one-objective leaderboard ranks them."""
    fronts = objective_ranks(sweep)
    sign = -1.0 if sweep.mode == "max" else 1.0
    placed = sorted((t for t in sweep.trials if t.trial_id in fronts),
                    key=lambda t: (fronts[t.trial_id], sign * sweep.objective(t), t.start_time))
    order = placed + [t for t in sweep.ranked() if t.trial_id not in fronts]
    names = [n for n, _ in sweep.objectives]
    rows = []
    for rank, t in enumerate(order, 1):
        rows.append([rank, fronts.get(t.trial_id, "-"), t.trial_id, *(t.params.get(p) for p in sweep.searched),
                     t.epochs_run, t.status, t.at_best("val_ccc_valence", sweep.metric, sweep.mode),
                     t.at_best("val_ccc_arousal", sweep.metric, sweep.mode), *(sweep.value(t, n) for n in names),
                     t.train_time_s])
    cols = ["rank", "front", "trial", *sweep.searched, "epochs", "status", "ccc_valence", "ccc_arousal", *names,
            "train time (s)"]
    objectives = ", ".join(f"{n} ({m})" for n, m in sweep.objectives)
    return Table("Leaderboard", cols, rows,
                 metric_columns=("ccc_valence", "ccc_arousal", *(n for n in names if n.startswith("val_"))),
                 significant_columns=tuple(n for n in names if n in COST_KEYS),
                 note=f"objectives {objectives}; the Pareto front first: front = the trial's front in the "
                      f"non-dominated sort of the complete trials over the objectives (1: on the Pareto front), then "
                      f"by {sweep.metric}; '-': not complete (stopped early, diverged, errored, running), ranked "
                      f"after by {sweep.metric} at its best epoch")


def pareto_section(sweep: Sweep, fig_dir: Path) -> tuple[str, list[Front]]:
    """The report's Pareto section (:mod:`analysis.fronts`): a figure of every front, and per front a table of the
    trials on it and its hypervolume with the reference point it was taken against."""
    fronts = sweep_fronts(sweep)
    complete = len(sweep.completed())
    what = ("over its objectives " + ", ".join(f"{n} ({m})" for n, m in sweep.objectives) if sweep.multi_objective
            else f"of {sweep.metric} ({sweep.mode}) against each cost: " + ", ".join(COST_FRONTS))
    parts = ["<h2>Pareto front" + ("" if len(fronts) == 1 else "s") + "</h2>",
             f"<p class='note'>The {complete} complete trial(s) of {len(sweep.trials)} (a trial stopped early is a "
             f"model trained less, its training time cut short), {html.escape(what)}. A trial is on the front when "
             f"no other is at least as good in every objective and better in one. Hypervolume: the region the front "
             f"dominates up to the reference point, in the product of the objectives' units; the reference point "
             f"is 0 for a maximised objective (or its worst value, when below 0) and 1.1 x the largest value of a "
             f"minimised one. inference ms (infer_ms) is wall time: on shared CPU cores it is noisy.</p>"]
    drawn = [f for f in fronts if f.trials]
    if drawn:
        path = figures.pareto_fronts(sweep, drawn, fig_dir / "pareto.png")
        parts.append(f"<img src='figures/{path.name}' alt='Pareto fronts'>")
    for front in fronts:
        rows = front_rows(sweep, front)
        note = front.note or ""
        if front.left_out:
            note = (note + "; " if note else "") + f"{front.left_out} complete trial(s) without every value left out"
        table = Table(f"Pareto front: {front.title}", rows.columns, rows.rows,
                      metric_columns=tuple(n for n in front.names if n.startswith("val_")),
                      significant_columns=tuple(c for c in rows.columns if c in COST_KEYS),
                      note=note or f"{len(front.members)} of {len(front.trials)} complete trial(s) on the front, "
                                   f"best {front.names[0]} first")
        parts.append(table.to_html())
        parts.append(f"<p class='hypervolume'>hypervolume of {html.escape(front.title)}: "
                     f"{html.escape(front.hypervolume_text())}</p>")
    return "".join(parts), fronts


def cv_leaderboard_table(sweep: Sweep) -> Table:
    """A cross-validated sweep's leaderboard: complete trials first by their mean over folds, the within-one-sd mark,
    folds finished, fold-epochs run, the pooled out-of-fold CCC per dimension and the mean ± sd over folds."""
    near = sweep.near_best()
    rows = []
    for rank, t in enumerate(sweep.ranked(), 1):
        cv = t.cv
        rows.append([rank, NEAR_MARK if t.trial_id in near else "", t.trial_id,
                     *(t.params.get(p) for p in sweep.searched), cv.folds_text() if cv else "-", t.epochs_run,
                     t.status, *(t.at_best(d, sweep.metric, sweep.mode) if t.cv_complete else None
                                 for d in ("val_ccc_valence", "val_ccc_arousal")),
                     cv.text() if cv else "-", t.train_time_s])
    cols = ["rank", NEAR_MARK, "trial", *sweep.searched, "folds", "fold-epochs", "status", "pooled ccc_valence",
            "pooled ccc_arousal", f"{sweep.metric} mean ± sd", "train time (s)"]
    return Table("Leaderboard", cols, rows, metric_columns=("pooled ccc_valence", "pooled ccc_arousal"),
                 note=f"objective {sweep.metric} ({sweep.mode}): mean ± sample sd over the {sweep.folds} subject "
                      f"folds (each fold scored at its best epoch); only trials that finished every fold are ranked "
                      f"by it, the others follow by the folds they finished. pooled: the CCC of the out-of-fold "
                      f"predictions of every fold together. {NEAR_NOTE}")


@dataclass
class Racing:
    """What racing saved in a cross-validated sweep: the fold-epochs its trials ran against the K x E each would have
    run to the end (trials that ended without an error; :meth:`analysis.sweeps.Sweep.fold_epochs`)."""

    run: int
    full: int
    trials: int

    @property
    def saved(self) -> int:
        return self.full - self.run

    @property
    def share(self) -> float:
        return self.saved / self.full if self.full else math.nan

    def text(self) -> str:
        if not self.full:
            return "- (no trial ended)"
        return (f"{self.saved} of {self.full} fold-epochs ({100 * self.share:.1f}%): {self.trials} trial(s) ran "
                f"{self.run} instead of {self.full}")


def cv_section(sweep: Sweep, fig_dir: Path) -> tuple[str, Racing]:
    """The HTML of a cross-validated sweep's own section (strip plot, folds, racing) and the racing figures."""
    racing = Racing(*sweep.fold_epochs())
    top = [t for t in sweep.ranked() if t.cv is not None and t.cv.scores][:STRIP_TRIALS]
    parts = [f"<h2>Cross-validation ({sweep.folds} subject folds)</h2>"]
    folds = Table("Folds", ["fold", "validation subjects"],
                  [[i, ", ".join(s)] for i, s in enumerate(sweep.fold_subjects, 1)])
    parts.append(folds.to_html())
    parts.append("<h3>Fold-epochs saved by racing</h3><p class='racing'>" + html.escape(racing.text()) + "</p>")
    if top:
        path = figures.fold_strip(sweep, top, fig_dir / "folds.png")
        title = f"Per-fold {sweep.metric} of the top {len(top)} trials"
        parts.append(f"<h3>{html.escape(title)}</h3><p class='note'>dots: each fold's score (fold_score of its run; "
                     f"open: a trial that did not finish every fold); bar: mean ± sd over the folds it finished; "
                     f"{NEAR_MARK}: within one sd of the best</p>"
                     f"<img src='figures/{path.name}' alt='{html.escape(title)}'>")
    return "".join(parts), racing


def _refits(client, sweep: Sweep) -> str:
    """The refits of a cross-validated sweep's best configuration (``emotune promote``), newest first."""
    runs = client.search_runs([client.get_run(sweep.parent_run_id).info.experiment_id],
                              f"tags.`emotune.refit_of_run_id` = '{sweep.parent_run_id}'",
                              order_by=["attributes.start_time DESC"])
    def text(run) -> str:
        tags = run.data.tags
        return (f"trial {tags.get('emotune.refit_trial', '?')} for {tags.get('emotune.refit_epochs', '?')} epoch(s) "
                f"on every non-test subject, run {tags.get('emotune.refit_run_id', run.info.run_id)} "
                f"({run.info.status.lower()})")

    return "; ".join(text(r) for r in runs) or "none (`emotune promote` refits the best)"


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
    racing = None
    if sweep.folds:
        html_cv, racing = cv_section(sweep, fig_dir)
        sections.append(html_cv)
    html_pareto, fronts = pareto_section(sweep, fig_dir)
    sections.append(html_pareto)
    sections.append(pretraining_section(client, sweep, fig_dir))
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
    over = f", mean over {sweep.folds} subject folds" if sweep.folds else ""
    objective = ("objectives", ", ".join(f"{n} ({m})" for n, m in sweep.objectives) + " (the first is primary)") \
        if sweep.multi_objective else ("objective", f"{sweep.metric} ({sweep.mode}){over}")
    summary = [("sweep", sweep.name), ("experiment", sweep.experiment), ("study", sweep.space),
               ("parent run", sweep.parent_run_id), objective,
               ("validation", sweep.validation),
               ("trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"),
               ("best trial", f"{best.trial_id} ({best.cv.text() if best.cv else fmt_metric(sweep.objective(best))}, "
                              f"run {best.run_id})" if best else "none"),
               *([("fold-epochs saved by racing", racing.text())] if racing is not None else []),
               ("Pareto front" + ("" if len(fronts) == 1 else "s"),
                "; ".join(f"{f.title}: {', '.join(f.member_ids()) or 'none'}" for f in fronts)),
               *([("refits", _refits(client, sweep))] if sweep.folds else []),
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


__all__ = ["Importance", "Racing", "importance", "leaderboard_table", "write_report", "column_format"]
