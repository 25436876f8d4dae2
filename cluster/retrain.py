"""Retraining a sweep's top configurations with fresh seeds (``emotune promote --retrain-top K --seeds N``).

A sweep ranks configurations by one training run each, so the best of many is partly the luckiest seed. Before one is
promoted, the K best configurations by the validation objective are trained again N times each, with seeds
``seed, seed + 1, ... seed + N - 1`` (the first repeats the sweep's own run), every run to the study's full epochs with no
early stopping. The configuration with the best mean validation objective over its seeds is chosen; among its runs,
the one with the best validation objective is the candidate promotion scores on the test subjects (judgment call: the
checkpoint that validation prefers, as the sweep itself chose; the test split stays unseen until then).

The runs are a Ray Tune experiment like a sweep (the same trial function, resources and checkpoints) whose trials are
the K x N configurations, recorded in MLflow as a parent run ``<sweep>-retrain-<time>`` (tag ``emotune.retrain_of``)
with one child run per seed.

Refitting a cross-validated sweep's best configuration (``emotune promote`` of a CV sweep, :func:`refit_best`). A CV
trial's checkpoints are fold models, each trained on part of the non-test subjects. The configuration the sweep chose
(its best trial that finished every fold, by the mean over folds) is trained once more on every non-test subject (the
index's train and val splits), for the median of its folds' best epochs (rounded half up, at least 1:
:func:`refit_epochs`), with no validation left to choose an epoch or fit post-processing on: the model uses the
post-processing fitted on the trial's pooled out-of-fold predictions (its ``cv_postprocess.json``; none when the trial
ran without post-processing). The refit is a one-trial Ray Tune experiment like a retraining (the trial's config
without ``cv``, with ``refit``, ``epochs`` and ``max_units``), recorded as a parent run ``<sweep>-refit-<time>`` (kind
``refit``, tag ``emotune.refit_of``) with the trial's run, whose last checkpoint promotion scores on the test subjects.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune.search import Searcher

from trainables.errors import UserError
from trainables.provenance import KIND_TAG, REFIT_KIND, RETRAIN_KIND


@dataclass
class SeedRuns:
    """One configuration of the sweep (its trial there) and its retrained runs: seed -> (validation objective, run)."""

    trial_id: str
    sweep_value: float
    runs: dict[int, tuple[float, str]] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [v for v, _ in self.runs.values()]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        vals = self.values
        if len(vals) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))

    def best_run(self, mode: str) -> tuple[int, float, str]:
        seed = (max if mode == "max" else min)(self.runs, key=lambda s: self.runs[s][0])
        return seed, *self.runs[seed]


@dataclass
class Retrained:
    name: str
    parent_run_id: str
    metric: str
    mode: str
    configs: list[SeedRuns]
    chosen: SeedRuns
    run_id: str  # the candidate: the chosen configuration's run with the best validation objective
    seed: int

    def lines(self) -> list[str]:
        out = [f"retrained the top {len(self.configs)} configuration(s) with {self._seeds()} seed(s) each "
               f"(sweep {self.name}; {self.metric}, mean +- sd over seeds):"]
        for c in self.configs:
            failed = f", {len(c.failed)} run(s) failed" if c.failed else ""
            mark = "  <- chosen" if c is self.chosen else ""
            out.append(f"  trial {c.trial_id}: sweep {c.sweep_value:.4f}; retrained {c.mean:.4f} +- {c.std:.4f} "
                       f"(n={len(c.values)}{failed}){mark}")
        out.append(f"  candidate: run {self.run_id} (seed {self.seed})")
        return out

    def _seeds(self) -> int:
        return max(len(c.runs) + len(c.failed) for c in self.configs)


def top_trials(sweep, k: int) -> list:
    """The ``k`` best trials of ``sweep`` by their best validation objective (errored and diverged ones excluded)."""
    ranked = [t for t in sweep.ranked() if math.isfinite(sweep.objective(t)) and t.status not in ("errored",
                                                                                                    "diverged")]
    if not ranked:
        raise UserError(f"sweep {sweep.name!r} has no finished trial to retrain")
    return ranked[:k]


def retrain_configs(configs: dict[str, dict], seeds: int, storage_path: str) -> list[dict]:
    """One Tune config per (trial, seed): the trial's resolved config with ``seed`` advanced and its runtime pointed at
    the retrain experiment; ``runtime.origin`` names the sweep trial it repeats."""
    out = []
    for trial_id, config in configs.items():
        base = int(config.get("seed", 0))
        for j in range(seeds):
            runtime = {**config.get("runtime", {}), "storage_path": storage_path, "origin": trial_id}
            out.append({**config, "seed": base + j, "runtime": runtime})
    return out


def _experiment(client, experiment_id: str, tracking_uri: str, name: str, root: str, points: list[dict], tags: dict,
                metric: str, mode: str, max_concurrent: int | None = None, ray_address: str | None = None):
    """(parent run id, MLflow callback, tuner) of a Ray Tune experiment over the whole trial configs ``points``, run
    as a sweep runs its trials (the same trial function, resources, checkpoints and MLflow records: one child run per
    trial under a new parent run with ``tags``), with no early stopping. Starts Ray (or joins ``ray_address``)."""
    from cluster.resources import max_concurrent_trials
    from cluster.sweep import init_ray
    from cluster.tracking import MlflowTrialCallback
    from cluster.tuner import build_tuner

    runtime = points[0].get("runtime", {})
    init_ray(ray_address, log_to_driver=False, dashboard=runtime.get("executor") == "train")
    import ray

    workers = int(runtime.get("workers", 1))
    concurrent = max_concurrent_trials(ray.cluster_resources(), workers, float(runtime.get("cpus_per_worker", 1)),
                                       float(runtime.get("gpus_per_worker", 0)), max_concurrent, False)
    parent_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    units = int(points[0].get("max_units") or points[0].get("epochs", 1))
    step_key = "epoch" if int(points[0].get("reports_per_epoch", 1)) == 1 else "step"
    callback = MlflowTrialCallback(tracking_uri, experiment_id, parent_id, step_key=step_key, max_steps=units,
                                   metric=metric, mode=mode)
    tuner = build_tuner(name=name, storage=root, runtime={**runtime, "metric": metric, "mode": mode},
                        search_alg=FixedConfigs(points), num_samples=len(points),
                        concurrent=min(concurrent, len(points)), callbacks=[callback])
    return parent_id, callback, tuner


def retrain_top(client, sweep_ref: str, tracking_uri: str, k: int, seeds: int, max_concurrent: int | None = None,
                storage: str | None = None, ray_address: str | None = None) -> Retrained:
    """Train the sweep's top ``k`` configurations ``seeds`` times each and choose one (module docstring).

    Raises:
        UserError: ``k`` or ``seeds`` below 1; the sweep has no finished trial; every retrained run failed.
    """
    from analysis.sweeps import load_sweep

    if k < 1 or seeds < 1:
        raise UserError(f"--retrain-top and --seeds must be >= 1 (got {k} and {seeds})")
    sweep = load_sweep(client, sweep_ref)
    chosen = top_trials(sweep, k)
    configs = {t.trial_id: _trial_config(client, t.run_id) for t in chosen}
    root = _results_root(next(iter(configs.values())), storage)
    name = f"{sweep.name}-retrain-{time.strftime('%Y%m%d-%H%M%S')}"
    points = retrain_configs(configs, seeds, f"{root}/{name}")

    parent = client.get_run(sweep.parent_run_id)
    parent_id, callback, tuner = _experiment(client, parent.info.experiment_id, tracking_uri, name, root, points, tags={
        KIND_TAG: RETRAIN_KIND, "emotune.retrain_of": sweep.name, "emotune.retrain_of_run_id": sweep.parent_run_id,
        "emotune.space": sweep.space}, metric=sweep.metric, mode=sweep.mode, max_concurrent=max_concurrent,
        ray_address=ray_address)
    status = "FAILED"
    try:
        results = tuner.fit()
        by_origin = {t.trial_id: SeedRuns(t.trial_id, sweep.objective(t)) for t in chosen}
        for result in results:
            config = result.config or {}
            entry = by_origin[config["runtime"]["origin"]]
            trial_id = (result.metrics or {}).get("trial_id")
            value = callback.best.get(trial_id, (None, None))[0] if trial_id else None
            run_id = callback.run_id(trial_id) if trial_id else None
            if result.error is not None or value is None or run_id is None:
                entry.failed.append(int(config["seed"]))
            else:
                entry.runs[int(config["seed"])] = (float(value), run_id)
        ranked = [c for c in by_origin.values() if c.runs]
        if not ranked:
            raise UserError(f"every retrained run of sweep {sweep.name!r} failed; see the Ray results in {root}/{name}")
        best = (max if sweep.mode == "max" else min)(ranked, key=lambda c: c.mean)
        seed, _, run_id = best.best_run(sweep.mode)
        out = Retrained(sweep.name, parent_id, sweep.metric, sweep.mode, list(by_origin.values()), best, run_id, seed)
        client.log_dict(parent_id, {c.trial_id: {"sweep": c.sweep_value, "mean": c.mean, "std": c.std,
                                                 "runs": {str(s): list(v) for s, v in c.runs.items()},
                                                 "failed": c.failed} for c in out.configs}, "retrain.json")
        client.set_tag(parent_id, "emotune.best_run_id", run_id)
        client.set_tag(parent_id, "emotune.best_trial", best.trial_id)
        status = "FINISHED"
        return out
    finally:
        client.set_terminated(parent_id, status)


def _results_root(config: dict, storage: str | None) -> str:
    """Where a retraining or refit keeps its Ray results: ``storage``, else beside the sweep's (its trials'
    ``runtime.storage_path``), else ``./ray_results``."""
    results_dir = config.get("runtime", {}).get("storage_path") or ""
    return storage or (str(Path(results_dir).parent) if results_dir else str(Path("ray_results").resolve()))


def refit_epochs(median: float) -> int:
    """The refit's epochs: the median of the folds' best epochs, rounded half up (1.5 -> 2), at least 1."""
    return max(1, math.floor(float(median) + 0.5))


@dataclass
class Refit:
    """A cross-validated sweep's chosen configuration trained on every non-test subject (:func:`refit_best`)."""

    sweep: str
    parent_run_id: str  # the refit's MLflow parent run (kind ``refit``)
    run_id: str  # the refit trial's run: the model promotion scores
    trial_id: str  # the sweep trial whose configuration was refit
    trial_run_id: str
    metric: str
    cv_mean: float
    cv_sd: float
    folds: int
    best_epoch_median: float
    epochs: int
    postprocess: dict
    postprocess_source: str

    def lines(self) -> list[str]:
        return [f"refit trial {self.trial_id} of sweep {self.sweep} ({self.metric} {self.cv_mean:.4f} ± "
                f"{self.cv_sd:.4f} over {self.folds} subject folds) on every non-test subject for {self.epochs} "
                f"epoch(s) (the median of its folds' best epochs, {self.best_epoch_median:g}, rounded half up); "
                f"post-processing: {self.postprocess_source}",
                f"  refit run: {self.run_id} (parent run {self.parent_run_id})"]

    def record(self) -> dict:
        """What ``refit.json`` of the refit's parent run and ``production.yaml`` say about it."""
        return {"sweep": self.sweep, "run_id": self.parent_run_id, "candidate_run_id": self.run_id,
                "trial": self.trial_id, "trial_run_id": self.trial_run_id, "metric": self.metric,
                "cv_mean": self.cv_mean, "cv_sd": self.cv_sd, "folds": self.folds,
                "best_epoch_median": self.best_epoch_median, "epochs": self.epochs,
                "postprocess": self.postprocess, "postprocess_source": self.postprocess_source}


def refit_config(config: dict, epochs: int, postprocess: dict, value: float, storage_path: str,
                 origin: str) -> dict:
    """The refit's Tune config: the CV trial's resolved config without ``cv``, with ``refit`` (epochs, the pooled
    post-processing, the CV objective it reports), ``epochs`` = ``max_units`` = the refit's epochs, and its runtime
    pointed at the refit experiment (``runtime.origin``: the sweep trial)."""
    runtime = {**config.get("runtime", {}), "storage_path": storage_path, "origin": origin}
    out = {k: v for k, v in config.items() if k != "cv"}
    out.update(refit={"epochs": epochs, "postprocess": postprocess, "value": value}, epochs=epochs, max_units=epochs,
               runtime=runtime)
    return out


def refit_best(client, sweep_ref: str, tracking_uri: str, storage: str | None = None,
               ray_address: str | None = None, trial: tuple[str, str] | None = None) -> Refit:
    """Train the cross-validated sweep's best configuration on every non-test subject (module docstring); ``trial``
    (its run id and trial id): that trial's configuration instead (a constrained promotion's choice), which must have
    finished every fold.

    Raises:
        UserError: no such sweep, no trial finished every fold, the sweep is not cross-validated, the best trial's
            records lack its CV summary or its pooled post-processing, the refit failed.
    """
    from analysis.promote import find_sweep
    from analysis.sweeps import cv_folds

    parent = find_sweep(client, sweep_ref)
    name = parent.data.tags["emotune.sweep"]
    folds = cv_folds(parent)
    if not folds:
        raise UserError(f"sweep {name!r} is not cross-validated: there is no refit to train")
    trial_run_id, trial_id = trial or (parent.data.tags["emotune.best_run_id"],
                                       parent.data.tags.get("emotune.best_trial", ""))
    metrics = client.get_run(trial_run_id).data.metrics
    missing = [k for k in ("cv_mean", "cv_sd", "cv_best_epoch_median") if k not in metrics]
    if missing:
        raise UserError(f"trial {trial_id} of sweep {name!r} has no {', '.join(missing)} in MLflow: its CV summary "
                        f"is written once it finished every fold")
    config = _trial_config(client, trial_run_id)
    postprocess, source = _pooled_postprocess(client, trial_run_id, trial_id, config)
    epochs = refit_epochs(metrics["cv_best_epoch_median"])
    metric, mode = str(config.get("metric") or "val_ccc_mean"), str(config.get("mode") or "max")
    root = _results_root(config, storage)
    run_name = f"{name}-refit-{time.strftime('%Y%m%d-%H%M%S')}"
    point = refit_config(config, epochs, postprocess, float(metrics["cv_mean"]), f"{root}/{run_name}", trial_id)
    parent_id, callback, tuner = _experiment(client, parent.info.experiment_id, tracking_uri, run_name, root, [point],
                                             tags={KIND_TAG: REFIT_KIND, "emotune.refit_of": name,
                                                   "emotune.refit_of_run_id": parent.info.run_id,
                                                   "emotune.refit_trial": trial_id,
                                                   "emotune.refit_trial_run_id": trial_run_id,
                                                   "emotune.refit_epochs": str(epochs),
                                                   "emotune.space": parent.data.tags.get("emotune.space", "")},
                                             metric=metric, mode=mode, max_concurrent=1, ray_address=ray_address)
    status = "FAILED"
    try:
        result = tuner.fit()[0]
        refit_trial = (result.metrics or {}).get("trial_id")
        run_id = callback.run_id(refit_trial) if refit_trial else None
        done = int((result.metrics or {}).get("epoch", 0) or 0)
        if result.error is not None or run_id is None or done < epochs or refit_trial not in callback.best:
            raise UserError(f"the refit of trial {trial_id} of sweep {name!r} failed"
                            f"{f' after {done} of {epochs} epoch(s)' if done < epochs else ''}; see the Ray results in "
                            f"{root}/{run_name}")
        out = Refit(name, parent_id, run_id, trial_id, trial_run_id, metric, float(metrics["cv_mean"]),
                    float(metrics["cv_sd"]), folds, float(metrics["cv_best_epoch_median"]), epochs, postprocess, source)
        client.log_dict(parent_id, out.record(), "refit.json")
        client.set_tag(parent_id, "emotune.refit_run_id", run_id)
        status = "FINISHED"
        return out
    finally:
        client.set_terminated(parent_id, status)


def _pooled_postprocess(client, run_id: str, trial_id: str, config: dict) -> tuple[dict, str]:
    """(the post-processing the refit's model uses, where it comes from): the trial's ``cv_postprocess.json`` (fitted
    on its pooled out-of-fold predictions), or none when the trial ran without post-processing.

    Raises:
        UserError: the trial searched post-processing but its checkpoint holds no ``cv_postprocess.json``.
    """
    with tempfile.TemporaryDirectory(prefix="emotune-post-") as tmp:
        try:
            path = client.download_artifacts(run_id, "checkpoint/cv_postprocess.json", tmp)
        except Exception as exc:
            if config.get("postprocess", True) is False:
                return {}, "none (the trial ran without post-processing)"
            raise UserError(f"trial {trial_id} (run {run_id}) has no checkpoint/cv_postprocess.json: the "
                            f"post-processing fitted on its pooled out-of-fold predictions "
                            f"({' '.join(str(exc).split())[:160]})") from None
        return json.loads(Path(path).read_text()), "fitted on the pooled out-of-fold predictions (cv_postprocess.json)"


class FixedConfigs(Searcher):
    """A Tune searcher that proposes exactly ``configs``, in order, then finishes. (Tune's own
    ``points_to_evaluate`` needs every key of a point declared in the param space; these are whole trial configs.)"""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.pending = [dict(c) for c in configs]

    def suggest(self, trial_id: str):
        return self.pending.pop(0) if self.pending else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


def _trial_config(client, run_id: str) -> dict:
    """The resolved Tune config a sweep trial ran with (``config.json`` of its run)."""
    with tempfile.TemporaryDirectory(prefix="emotune-cfg-") as tmp:
        try:
            path = client.download_artifacts(run_id, "config.json", tmp)
        except Exception as exc:
            raise UserError(f"trial run {run_id} has no config.json to retrain from "
                            f"({' '.join(str(exc).split())[:160]})") from None
        return json.loads(Path(path).read_text())
