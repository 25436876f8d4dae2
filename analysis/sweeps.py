"""A finished (or running) sweep as its MLflow records hold it: the parent run, one trial per child run with its
params, status and per-epoch history. ``emotune report`` and ``emotune compare`` read sweeps only through here.

A cross-validated sweep (parent tag ``emotune.cv_folds`` = K) has one more level: each trial run has one run per
subject fold (``emotune.fold``), whose ``fold_score`` is the fold's score; a trial is complete only once it finished
every fold, its objective is then ``cv_mean`` (the mean over folds) and its per-dimension metrics are those of its
pooled out-of-fold predictions (``cv_pooled_val_*``). A trial that did not finish every fold has no objective: it is
listed, after the complete ones, with the folds it finished (:class:`analysis.leaderboard.CV`)."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.leaderboard import CV, cv_rank_key, near_best, trial_status
from trainables.errors import UserError
from trainables.provenance import KIND_TAG, SWEEP_KIND
from trainables.reports import COST_KEYS

#: Per-epoch metrics read from each trial's history besides the objective.
HISTORY_METRICS = ("val_ccc_valence", "val_ccc_arousal", "val_rmse_valence", "val_rmse_arousal", "epoch_time_s")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# A report reads a few small artifacts; MLflow's progress bar for each would bury what the command prints.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class Fold:
    """One subject fold of a cross-validated trial (one MLflow run under the trial's run)."""

    fold: int
    run_id: str
    subjects: list[str]
    score: float  # ``fold_score``: the objective at the fold's best epoch (NaN: the fold was cut short)
    best_epoch: int | None
    complete: bool


@dataclass
class Trial:
    """One trial of a sweep (one MLflow child run)."""

    trial_id: str
    run_id: str
    params: dict[str, Any]  # every setting the trial ran with (its resolved config without runtime plumbing)
    status: str  # complete | stopped early | diverged | errored | running
    start_time: int  # ms since the epoch, orders trials as the sweep started them
    history: dict[str, dict[int, float]]  # metric -> {epoch: value}
    train_time_s: float  # sum of the epoch times (the run's duration when no epoch time was reported)
    # A cross-validated trial: its standing over folds, its fold runs, the metrics of its pooled out-of-fold
    # predictions (``val_*`` keys) and the median of its folds' best epochs (once every fold is done).
    cv: CV | None = None
    folds: list[Fold] = field(default_factory=list)
    pooled: dict[str, float] = field(default_factory=dict)
    best_epoch_median: float | None = None
    # What the trial measured of its costs (:data:`COST_KEYS`, :func:`run_costs`); a trial recorded before costs were
    # measured has none.
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def cv_complete(self) -> bool:
        """A cross-validated trial that finished every fold without an error."""
        return self.cv is not None and self.cv.complete and self.status == "complete"

    def objective_curve(self, metric: str) -> list[tuple[int, float]]:
        return sorted(self.history.get(metric, {}).items())

    def best_epoch(self, metric: str, mode: str) -> int | None:
        curve = [(e, v) for e, v in self.objective_curve(metric) if math.isfinite(v)]
        if not curve or self.status == "diverged":
            return None
        return (max if mode == "max" else min)(curve, key=lambda ev: ev[1])[0]

    def at_best(self, key: str, metric: str, mode: str) -> float:
        """``key``'s value at this trial's best epoch by ``metric`` (NaN when the trial has none). A cross-validated
        trial's: ``metric`` is its mean over folds, any other key its pooled out-of-fold value (NaN until every fold
        is done)."""
        if self.cv is not None:
            if not self.cv_complete:
                return math.nan
            return self.cv.mean if key == metric else self.pooled.get(key, math.nan)
        epoch = self.best_epoch(metric, mode)
        return self.history.get(key, {}).get(epoch, math.nan) if epoch is not None else math.nan

    @property
    def epochs_run(self) -> int:
        return max((max(h) for h in self.history.values() if h), default=0)


@dataclass
class Sweep:
    """A sweep's parent run and its trials, with the study's objective and searched parameters."""

    name: str
    parent_run_id: str
    experiment: str
    space: str  # the study's name (``ssts_strides``, ``smoke`` ...)
    metric: str
    mode: str
    searched: list[str]  # parameters the study searched (pinned ones excluded)
    overrides: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    results_dir: str | None = None  # the Ray Tune experiment folder, when the records name it
    log_scaled: set[str] = field(default_factory=set)  # searched parameters Optuna drew on a log scale
    folds: int = 0  # K of a cross-validated sweep (0: one split)
    fold_subjects: list[list[str]] = field(default_factory=list)  # the validation subjects of each fold
    # (metric, mode) of every objective, the primary one (``metric``, ``mode``) first: several for a study with
    # ``objectives:`` (the parent run's tag ``emotune.objectives``), else the one objective.
    objectives: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.objectives:
            self.objectives = [(self.metric, self.mode)]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def value(self, trial: Trial, name: str) -> float:
        """A trial's value of ``name``: a cost as it measured it (:func:`run_costs`), the primary objective as
        :meth:`objective` has it, any other metric at the trial's best epoch by the primary objective (the checkpoint
        the trial kept; a cross-validated trial's: its pooled out-of-fold value). NaN when the trial has none (a metric
        :func:`load_sweep` was not asked to read is none)."""
        if name in COST_KEYS:
            return trial.costs.get(name, math.nan)
        if name == self.metric:
            return self.objective(trial)
        return trial.at_best(name, self.metric, self.mode)

    def completed(self) -> list[Trial]:
        """The trials that ran to their end without an error or a divergence: status ``complete`` (a cross-validated
        trial: every fold). A trial stopped early (by ASHA or a time budget) is left out: its objective is that of a
        model trained less, and its training time is cut short."""
        return [t for t in self.trials if (t.cv_complete if t.cv is not None else t.status == "complete")]

    @property
    def validation(self) -> str:
        """How the sweep validated: ``K-fold CV`` or ``one split``."""
        return f"{self.folds}-fold CV" if self.folds else "one split"

    def objective(self, trial: Trial) -> float:
        return trial.at_best(self.metric, self.metric, self.mode)

    def near_best(self) -> set[str]:
        """The trial ids within one sd of the best (:func:`analysis.leaderboard.near_best`; none in a one-split
        sweep)."""
        if not self.folds:
            return set()
        marks = near_best([t.cv for t in self.trials], [t.status for t in self.trials], self.mode)
        return {t.trial_id for t, mark in zip(self.trials, marks) if mark}

    def fold_epochs(self) -> tuple[int, int, int]:
        """(fold-epochs run, fold-epochs a full run of every trial takes, trials counted) of a cross-validated sweep:
        over the trials that ended without an error (complete or stopped early), K x E each, E being the epochs of a
        fold (the trial's ``max_units``, else ``epochs``). Their difference is what racing (ASHA) saved."""
        run = full = counted = 0
        for t in self.trials:
            if t.cv is None or t.status not in ("complete", "stopped early"):
                continue
            per_fold = int(t.params.get("max_units") or t.params.get("epochs") or 0)
            run += t.epochs_run
            full += self.folds * per_fold
            counted += 1
        return run, full, counted

    def ranked(self) -> list[Trial]:
        """Trials best first; trials without a finite objective (errored, diverged, no report) last. A cross-validated
        sweep's: complete trials by their mean over folds, then the others by the folds they finished
        (:func:`analysis.leaderboard.cv_rank_key`)."""
        if self.folds:
            return sorted(self.trials, key=lambda t: cv_rank_key(t.cv, t.status, self.mode))
        sign = -1.0 if self.mode == "max" else 1.0

        def key(t: Trial):
            v = self.objective(t)
            return (math.isnan(v) or t.status == "errored", sign * v if not math.isnan(v) else 0.0)

        return sorted(self.trials, key=key)

    def best(self) -> Trial | None:
        ranked = [t for t in self.ranked() if t.status != "errored" and not math.isnan(self.objective(t))]
        return ranked[0] if ranked else None


def is_sweep_parent(run) -> bool:
    """Whether ``run`` is a sweep's parent run: its kind (tag ``emotune.kind``) is ``sweep``.

    A promotion's run carries its sweep's ``emotune.sweep`` tag as lineage and has no parent run, so the name alone
    does not tell it from the sweep; the kind does. Judgment call for stores written before runs had a kind: a run
    without one is a sweep's parent when it has an ``emotune.sweep`` tag, no parent run and none of the marks the
    other top-level runs had then (``emotune.promotion``, ``emotune.retrain_of``).
    """
    tags = run.data.tags
    if KIND_TAG in tags:
        return tags[KIND_TAG] == SWEEP_KIND
    return bool(tags.get("emotune.sweep")) and not any(
        mark in tags for mark in ("mlflow.parentRunId", "emotune.promotion", "emotune.retrain_of"))


def find_parent_runs(client, experiment: str | None = None) -> list:
    """Every sweep parent run of the tracking store (or of ``experiment``), newest first (:func:`is_sweep_parent`)."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise UserError(f"no MLflow experiment named {experiment!r}; experiments: {', '.join(names) or 'none'}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    # Every sweep parent has the tag ``emotune.sweep`` (those written before the kind too); the kind decides.
    return [r for r in _search_all(client, ids, "tags.`emotune.sweep` != ''") if is_sweep_parent(r)]


def resolve_sweep(client, ref: str, experiment: str | None = None):
    """The parent run of the sweep named ``ref`` (or whose run id is ``ref``).

    Raises:
        UserError: no such sweep (the message lists the sweeps that exist), or the name is ambiguous across
            experiments (give ``--experiment`` or the run id).
    """
    if _RUN_ID.match(ref):
        try:
            run = client.get_run(ref)
        except Exception:  # MlflowException: no run with that id; fall through to names
            run = None
        if run is not None and is_sweep_parent(run):
            return run
    parents = find_parent_runs(client, experiment)
    matches = [r for r in parents if r.data.tags["emotune.sweep"] == ref]
    if not matches:
        where = f" in experiment {experiment!r}" if experiment else ""
        names = sorted({r.data.tags["emotune.sweep"] for r in parents})
        raise UserError(f"no sweep {ref!r}{where}; sweeps: {', '.join(names) if names else 'none'}")
    experiments = {r.info.experiment_id for r in matches}
    if len(experiments) > 1:
        names = sorted(client.get_experiment(e).name for e in experiments)
        raise UserError(f"sweep {ref!r} exists in experiments {', '.join(names)}; give --experiment or its parent "
                        f"run id ({', '.join(r.info.run_id for r in matches)})")
    return matches[0]  # newest first: a name reused in one experiment means its latest sweep


def load_sweep(client, ref: str, experiment: str | None = None, metrics: tuple[str, ...] = ()) -> Sweep:
    """The sweep ``ref`` (name or parent run id) with every trial's params, status, costs and per-epoch metric history
    (the objectives', :data:`HISTORY_METRICS` and ``metrics``)."""
    parent = resolve_sweep(client, ref, experiment)
    tags = parent.data.tags
    overrides = json.loads(tags.get("emotune.overrides") or "{}")
    study = _study_file(client, parent)
    objectives = objectives_of(parent, study)
    metric, mode = objectives[0]
    extra = tuple(dict.fromkeys(n for n in (*(m for m, _ in objectives[1:]), *metrics) if n not in COST_KEYS))
    specs = study.get("params") or {}
    searched = [k for k, spec in specs.items()
                if k not in overrides and not (isinstance(spec, dict) and spec.get("type") == "constant")]
    children = _search_all(client, [parent.info.experiment_id],
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    k = cv_folds(parent)
    fold_runs = _fold_runs(client, parent, {r.info.run_id for r in children}) if k else {}
    trials = [_trial(client, run, metric, k, fold_runs.get(run.info.run_id, []), extra) for run in children]
    trials.sort(key=lambda t: t.start_time)
    sweep = Sweep(tags["emotune.sweep"], parent.info.run_id, client.get_experiment(parent.info.experiment_id).name,
                  tags.get("emotune.space", study.get("name", "?")), metric, mode, searched, overrides, trials,
                  objectives=list(objectives))
    sweep.results_dir = _results_dir(client, children)
    sweep.log_scaled = {k for k in searched if log_scaled(specs[k])}
    if k:
        sweep.folds = k
        sweep.fold_subjects = _fold_subjects(client, parent, k, [f for t in trials for f in t.folds])
    return sweep


def objectives_of(parent, study: dict | None = None) -> list[tuple[str, str]]:
    """(metric, mode) of each objective of the sweep whose parent run is ``parent``, the primary one first: its tag
    ``emotune.objectives`` (a JSON list of [name, mode] pairs), else the ``objective`` of its study file ``study``
    (default ``val_ccc_mean``, ``max``)."""
    text = parent.data.tags.get("emotune.objectives") or ""
    try:
        pairs = [(str(m), str(mode)) for m, mode in json.loads(text)] if text else []
    except (ValueError, TypeError):  # not what emotune writes: the study file says
        pairs = []
    if pairs and all(mode in ("min", "max") for _, mode in pairs):
        return pairs
    objective = (study or {}).get("objective", {})
    return [(objective.get("metric", "val_ccc_mean"), objective.get("mode", "max"))]


def run_costs(client, run) -> dict[str, float]:
    """What the trial of ``run`` measured of its costs (:data:`COST_KEYS`), as its MLflow metrics hold them:
    ``params_m``, ``gflops`` and ``infer_ms`` as last reported; ``peak_mem_mb`` the largest value reported (a
    cross-validated trial counts its peak afresh in each fold); ``train_s`` the sum of the training seconds of every
    report (``train_time_s``), which is the trial's last ``train_s`` unless its count started again (each fold of a
    cross-validated trial, a trial resumed from a checkpoint after a crash: the epochs trained before count too), or
    its last ``train_s`` where no ``train_time_s`` was logged. A run without a cost metric has none of it."""
    metrics = run.data.metrics
    costs = {k: float(metrics[k]) for k in COST_KEYS if k in metrics and k not in ("train_s", "peak_mem_mb")}
    if "peak_mem_mb" in metrics:
        history = client.get_metric_history(run.info.run_id, "peak_mem_mb")
        costs["peak_mem_mb"] = max((float(m.value) for m in history), default=float(metrics["peak_mem_mb"]))
    if "train_s" in metrics:
        history = client.get_metric_history(run.info.run_id, "train_time_s") if "train_time_s" in metrics else []
        costs["train_s"] = float(sum(m.value for m in history)) if history else float(metrics["train_s"])
    return {k: costs[k] for k in COST_KEYS if k in costs}


def cv_folds(parent) -> int:
    """K of a cross-validated sweep's parent run (tag ``emotune.cv_folds``), 0 for a one-split sweep."""
    text = parent.data.tags.get("emotune.cv_folds") or ""
    return int(text) if text.isdigit() else 0


def _fold_runs(client, parent, trial_runs: set[str]) -> dict[str, list]:
    """The fold runs of a cross-validated sweep's trials: trial run id -> its fold runs. One search of the experiment
    for runs with a fold started since the sweep did, kept when their parent is one of the sweep's trials."""
    runs = _search_all(client, [parent.info.experiment_id],
                       f"tags.`emotune.fold` != '' and attributes.start_time >= {int(parent.info.start_time or 0)}")
    out: dict[str, list] = {}
    for run in runs:
        owner = run.data.tags.get("mlflow.parentRunId")
        if owner in trial_runs:
            out.setdefault(owner, []).append(run)
    return out


def _fold(run) -> Fold:
    tags, metrics = run.data.tags, run.data.metrics
    score = metrics.get("fold_score", math.nan)
    best = metrics.get("best_epoch")
    return Fold(int(tags["emotune.fold"]), run.info.run_id,
                [s for s in (tags.get("emotune.fold_subjects") or "").split(",") if s], float(score),
                int(best) if best is not None else None,
                tags.get("emotune.fold_complete") != "false" and math.isfinite(score))


def _fold_subjects(client, parent, k: int, folds: list[Fold]) -> list[list[str]]:
    """The validation subjects of each fold: the sweep's ``folds.json``, else its fold runs' tags."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="emotune-folds-") as tmp:
            path = client.download_artifacts(parent.info.run_id, "folds.json", tmp)
            return [list(f) for f in json.loads(Path(path).read_text())["folds"]]
    except Exception:  # an artifact store that is gone: the fold runs name their subjects too
        by_fold = {f.fold: f.subjects for f in folds}
        return [by_fold.get(i, []) for i in range(1, k + 1)]


def log_scaled(spec: Any) -> bool:
    """Whether a study param is drawn on a log scale, as :func:`search_spaces.schema.suggest` asks Optuna:
    ``loguniform``, or ``int`` with ``log: true`` (a ``uniform`` param is always drawn linearly)."""
    if not isinstance(spec, dict):
        return False
    return spec.get("type") == "loguniform" or (spec.get("type") == "int" and bool(spec.get("log", False)))


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _study_file(client, parent) -> dict:
    """The study file the sweep ran (logged on its parent run); {} when it cannot be read."""
    import tempfile

    name = parent.data.tags.get("emotune.space_file")
    if not name:
        return {}
    try:
        with tempfile.TemporaryDirectory(prefix="emotune-study-") as tmp:
            path = client.download_artifacts(parent.info.run_id, name, tmp)
            return yaml.safe_load(Path(path).read_text()) or {}
    except Exception:  # an artifact store that is gone: the report still has the runs
        return {}


def _trial(client, run, metric: str, k: int = 0, fold_runs: list | None = None, extra: tuple[str, ...] = ()) -> Trial:
    tags = run.data.tags
    history: dict[str, dict[int, float]] = {}
    for key in (metric, *HISTORY_METRICS, *extra):
        if key in run.data.metrics and key not in history:
            history[key] = {int(m.step): float(m.value) for m in client.get_metric_history(run.info.run_id, key)}
    stopped_early = tags.get("emotune.stopped_early") == "true"
    if k:  # complete only with every fold done
        done = tags.get("emotune.folds_done")
        stopped_early = (int(done) if done and done.isdigit() else int(run.data.metrics.get("folds_done", 0))) < k
    status = trial_status(errored=run.info.status == "FAILED", diverged=tags.get("emotune.diverged") == "true",
                          stopped_early=stopped_early, finished=run.info.status == "FINISHED")
    times = history.get("epoch_time_s", {})
    if times:
        train_time = float(sum(times.values()))
    else:
        end = run.info.end_time or run.info.start_time
        train_time = max(0.0, (end - run.info.start_time) / 1000.0)
    params = {key: _parse(v) for key, v in run.data.params.items()}
    trial = Trial(tags.get("emotune.trial_id", run.info.run_name or run.info.run_id[:8]), run.info.run_id, params,
                  status, int(run.info.start_time or 0), history, train_time, costs=run_costs(client, run))
    if k:
        metrics = run.data.metrics
        trial.folds = sorted((_fold(r) for r in fold_runs or []), key=lambda f: f.fold)
        scores = [f.score for f in trial.folds if f.complete]
        complete = len(scores) >= k and "cv_mean" in metrics
        trial.cv = CV.of(k, scores, metrics.get("cv_mean") if complete else None,
                         metrics.get("cv_sd") if complete else None)
        trial.pooled = {key[len("cv_pooled_"):]: float(v) for key, v in metrics.items() if key.startswith("cv_pooled_")}
        trial.best_epoch_median = metrics.get("cv_best_epoch_median")
    return trial


def _parse(text: str) -> Any:
    """A param as the trial had it (MLflow stores strings; the callback wrote JSON for non-strings)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def _results_dir(client, children) -> str | None:
    """The sweep's Ray Tune folder, from the first trial's logged config (``runtime.storage_path``)."""
    import tempfile

    for run in children[:1]:
        try:
            with tempfile.TemporaryDirectory(prefix="emotune-cfg-") as tmp:
                path = client.download_artifacts(run.info.run_id, "config.json", tmp)
                return json.loads(Path(path).read_text()).get("runtime", {}).get("storage_path")
        except Exception:
            return None
    return None
