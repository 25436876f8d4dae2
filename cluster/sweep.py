"""The Tune driver: a validated search space -> OptunaSearch (define-by-run, TPE) + ASHA -> Tuner over
``trainables.trial.run_trial``, recorded in MLflow."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces.schema import SearchSpace, load_space, suggest
from trainables.trial import TRIAL_DRIVER_RESOURCES, run_trial

from cluster.progress import ProgressPrinter
from cluster.resources import max_concurrent_trials
from cluster.tracking import MlflowTrialCallback, default_tracking_uri, log_checkpoint, open_experiment


@dataclass
class SweepOptions:
    space: str = "smoke"
    data_index: str = ""
    num_samples: int = 8
    max_concurrent: int | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    storage: str = "ray_results"
    name: str | None = None
    seed: int = 0
    time_budget_s: float | None = None
    tracking_uri: str | None = None
    experiment: str = "emotune"
    artifact_root: str = "mlartifacts"
    overrides: dict[str, Any] = field(default_factory=dict)
    ray_address: str | None = None
    verbose: int = 0  # 0: one line per trial event; 1: Tune's status tables; 2: also every worker's log


@dataclass
class SweepOutcome:
    name: str
    results: Any  # ray.tune.ResultGrid
    space: SearchSpace
    storage: Path
    tracking_uri: str
    parent_run_id: str
    best_trial_id: str | None
    best_run_id: str | None


class DefineByRun:
    """Optuna define-by-run function of a space plus the constant trial settings; a class (not a closure) because
    Tune pickles the searcher into its experiment checkpoint."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]):
        self.space, self.constants = space, constants

    def __call__(self, trial) -> dict[str, Any]:
        return {**suggest(self.space, trial), **self.constants}


def init_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS), else start Ray in-process. The dashboard stays on: Train V2 watches
    its controller through the State API, which the dashboard serves (without it, trials after the first hang)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=log_to_driver)


def run_sweep(opts: SweepOptions) -> SweepOutcome:
    """Run one sweep and return its results with the MLflow ids; the best trial's checkpoint is logged to its run."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(opts.space, opts.overrides)
    if not Path(opts.data_index).is_file():
        raise FileNotFoundError(f"dataset index {opts.data_index!r} not found; run `emotune data prepare` first")
    init_ray(opts.ray_address, log_to_driver=opts.verbose >= 2)

    workers = int(opts.workers if opts.workers is not None else space.resources["workers"])
    cpus = float(opts.cpus_per_worker if opts.cpus_per_worker is not None else space.resources["cpus_per_worker"])
    gpus = float(opts.gpus_per_worker if opts.gpus_per_worker is not None else space.resources["gpus_per_worker"])
    concurrent = max_concurrent_trials(ray.cluster_resources(), workers, cpus, gpus, opts.max_concurrent)

    storage = Path(opts.storage).resolve() if "://" not in opts.storage else opts.storage
    name = opts.name or f"{space.name}-{os.getpid()}"
    runtime = {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus,
               "storage_path": str(Path(storage) / name)}
    data_index = str(Path(opts.data_index).resolve())
    epochs = int(space.fidelity["max"])

    define_by_run = DefineByRun(space, {"data_index": data_index, "epochs": epochs, "runtime": runtime})
    searcher = OptunaSearch(space=define_by_run, metric=space.metric, mode=space.mode,
                            sampler=optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=max(2, concurrent)))
    scheduler = ASHAScheduler(time_attr=space.fidelity["attr"], max_t=epochs, grace_period=space.fidelity["grace"],
                              reduction_factor=space.fidelity["reduction_factor"])

    tracking_uri = opts.tracking_uri or default_tracking_uri()
    client, experiment_id = open_experiment(tracking_uri, opts.experiment, artifact_root=Path(opts.artifact_root))
    parent = client.create_run(experiment_id, run_name=name, tags={"emotune.sweep": name, "emotune.space": space.name})
    parent_id = parent.info.run_id
    client.log_artifact(parent_id, str(space.path))
    from mlflow.entities import Param
    client.log_batch(parent_id, params=[Param("space", space.name), Param("num_samples", str(opts.num_samples)),
                                        Param("max_concurrent", str(concurrent)), Param("seed", str(opts.seed)),
                                        Param("workers", str(workers)), Param("data_index", data_index)])
    callback = MlflowTrialCallback(client, experiment_id, parent_id, step_key=space.fidelity["attr"], max_steps=epochs)
    callbacks = [callback]
    if opts.verbose == 0:
        callbacks.append(ProgressPrinter(space.metric, space.fidelity["attr"], epochs))

    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRIAL_DRIVER_RESOURCES),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=opts.num_samples, max_concurrent_trials=concurrent,
                                    time_budget_s=opts.time_budget_s),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks,
                                   verbose=min(opts.verbose, 1)),
    )
    status = "FAILED"
    best_trial = best_run = None
    try:
        results = tuner.fit()
        best_trial, best_run = _record_best(results, space, client, callback, parent_id)
        status = "FINISHED"
    finally:
        client.set_terminated(parent_id, status)
    return SweepOutcome(name, results, space, Path(str(storage)), tracking_uri, parent_id, best_trial, best_run)


def _record_best(results, space: SearchSpace, client, callback: MlflowTrialCallback, parent_id: str):
    """Log the best trial's best-epoch checkpoint to its run and tag the parent with it."""
    try:
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all")
    except RuntimeError:
        return None, None
    df = best.metrics_dataframe
    if df is None or space.metric not in df or "checkpoint_path" not in df:
        return None, None
    df = df.dropna(subset=[space.metric])
    row = df.loc[df[space.metric].idxmax() if space.mode == "max" else df[space.metric].idxmin()]
    trial_id = best.metrics.get("trial_id")
    run_id = callback.run_id(trial_id)
    ckpt = row.get("checkpoint_path")
    if run_id and isinstance(ckpt, str) and Path(ckpt).is_dir():
        log_checkpoint(client, run_id, ckpt)
        client.set_tag(run_id, "emotune.best_checkpoint_epoch", str(int(row[space.fidelity["attr"]])))
        client.set_tag(parent_id, "emotune.best_trial", trial_id)
        client.set_tag(parent_id, "emotune.best_run_id", run_id)
        client.log_metric(parent_id, f"best_{space.metric}", float(row[space.metric]))
    return trial_id, run_id
