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
from trainables.provenance import KIND_TAG, RETRAIN_KIND


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


def retrain_top(client, sweep_ref: str, tracking_uri: str, k: int, seeds: int, max_concurrent: int | None = None,
                storage: str | None = None, ray_address: str | None = None) -> Retrained:
    """Train the sweep's top ``k`` configurations ``seeds`` times each and choose one (module docstring).

    Raises:
        UserError: ``k`` or ``seeds`` below 1; the sweep has no finished trial; every retrained run failed.
    """
    from analysis.sweeps import load_sweep
    from cluster.resources import max_concurrent_trials
    from cluster.sweep import init_ray
    from cluster.tracking import MlflowTrialCallback
    from cluster.tuner import build_tuner

    if k < 1 or seeds < 1:
        raise UserError(f"--retrain-top and --seeds must be >= 1 (got {k} and {seeds})")
    sweep = load_sweep(client, sweep_ref)
    chosen = top_trials(sweep, k)
    configs = {t.trial_id: _trial_config(client, t.run_id) for t in chosen}
    first = next(iter(configs.values()))
    runtime = first.get("runtime", {})
    results_dir = runtime.get("storage_path") or ""
    root = storage or (str(Path(results_dir).parent) if results_dir else str(Path("ray_results").resolve()))
    name = f"{sweep.name}-retrain-{time.strftime('%Y%m%d-%H%M%S')}"
    points = retrain_configs(configs, seeds, f"{root}/{name}")

    init_ray(ray_address, log_to_driver=False, dashboard=runtime.get("executor") == "train")
    import ray

    workers = int(runtime.get("workers", 1))
    concurrent = max_concurrent_trials(ray.cluster_resources(), workers, float(runtime.get("cpus_per_worker", 1)),
                                       float(runtime.get("gpus_per_worker", 0)), max_concurrent, False)
    parent = client.get_run(sweep.parent_run_id)
    parent_id = client.create_run(parent.info.experiment_id, run_name=name, tags={
        KIND_TAG: RETRAIN_KIND, "emotune.retrain_of": sweep.name, "emotune.retrain_of_run_id": sweep.parent_run_id,
        "emotune.space": sweep.space}).info.run_id
    units = int(first.get("max_units") or first.get("epochs", 1))
    step_key = "epoch" if int(first.get("reports_per_epoch", 1)) == 1 else "step"
    callback = MlflowTrialCallback(tracking_uri, parent.info.experiment_id, parent_id, step_key=step_key,
                                   max_steps=units, metric=sweep.metric, mode=sweep.mode)
    tuner = build_tuner(name=name, storage=root, runtime={**runtime, "metric": sweep.metric, "mode": sweep.mode},
                        search_alg=FixedConfigs(points), num_samples=len(points), concurrent=concurrent,
                        callbacks=[callback])
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
