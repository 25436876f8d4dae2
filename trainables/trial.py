"""The Tune function: one trial = one run of the training loop, by one of two executors.

* ``inline`` (one worker per trial): the loop runs in the Tune trial process itself, which holds the worker's CPUs and
  GPUs. Nothing else starts per trial, and with ``reuse_actors`` the next trial reuses the same process (Python, torch
  and the model code already imported). Measured on a 2-CPU machine, a Ray Train worker group cost a short trial about
  a minute of controller and worker start-up, checkpoint upload and teardown; this executor removes it (see
  ``benchmarks/bench_sweep_overhead.py``).
* ``train`` (any number of workers; DDP on GPUs): the trial builds and fits a Ray Train ``TorchTrainer`` with
  ``TuneReportCallback`` (Train V2 inside Tune is supported as a Tune *function*; the deprecated
  ``Tuner(TorchTrainer)`` path is not used).

``auto`` picks ``inline`` for one worker and ``train`` for more. Both run ``trainables.loop.fit``; only the session it
reports to differs (``trainables.session``).

Why the ``train`` executor's trial holds no CPU (measured with Ray 2.60, whose Train V2 is the default): the trial
function only waits on its trainer; with Tune's default of 1 CPU per trial, two concurrent trials took both CPUs and
their 1-CPU workers never started (a hang). Tune refuses an empty request, so that trial reserves memory only
(``TRIAL_DRIVER_RESOURCES``) and the CPUs/GPUs go to the workers; the sweep caps concurrent trials at what the workers
can fill (see ``cluster.resources``). Train V2 watches its controller through Ray's State API, which needs the
dashboard: the driver starts Ray with the dashboard on, or later trials hang after the first one finishes.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainables.loop import OBJECTIVE, train_in_trial, train_loop_per_worker

# 256 MiB: what the waiting trial process needs; nonzero so that Tune accepts the request.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
EXECUTORS = ("auto", "inline", "train")


def choose_executor(requested: str, workers: int) -> str:
    """``inline`` or ``train`` for a sweep whose trials have ``workers`` workers.

    Raises:
        ValueError: an unknown executor, or ``inline`` with more than one worker.
    """
    if requested not in EXECUTORS:
        raise ValueError(f"unknown executor {requested!r}; choose one of {', '.join(EXECUTORS)}")
    if requested == "auto":
        return "inline" if workers == 1 else "train"
    if requested == "inline" and workers != 1:
        raise ValueError(f"the inline executor runs one worker per trial (got workers={workers}); use --executor train "
                         "for multi-worker (DDP) trials")
    return requested


def worker_resources(runtime: dict) -> dict[str, float]:
    """One worker's CPUs and (when it has any) GPUs."""
    gpus = float(runtime.get("gpus_per_worker", 0))
    return {"CPU": float(runtime.get("cpus_per_worker", 1)), **({"GPU": gpus} if gpus else {})}


def trial_resources(config: dict):
    """What one trial's process reserves: the worker's CPUs and GPUs when it trains itself (``inline``), else memory
    only (its ``train`` workers reserve their own)."""
    from ray.tune import PlacementGroupFactory

    runtime = config["runtime"]
    if runtime.get("executor") != "inline":
        return PlacementGroupFactory([TRIAL_DRIVER_RESOURCES])
    return PlacementGroupFactory([worker_resources(runtime)])


def run_trial(config: dict) -> None:
    """Fit one configuration; ``config["runtime"]`` holds the executor, resources and storage."""
    runtime = config["runtime"]
    gpus = float(runtime.get("gpus_per_worker", 0))
    loop_config = {**{k: v for k, v in config.items() if k != "runtime"},
                   "threads": max(1, int(runtime.get("cpus_per_worker", 1))), "gpus": gpus}
    if runtime.get("executor") == "inline":
        train_in_trial(loop_config)
        return

    import ray
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # Train polls its controller through the State API, which finds the cluster via RAY_ADDRESS or, failing that,
    # refuses to choose when two local Ray instances run on one machine: point it at the cluster this trial is in.
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    trial_id = ray.tune.get_context().get_trial_id()
    scaling = ScalingConfig(
        num_workers=int(runtime.get("workers", 1)),
        use_gpu=gpus > 0,
        resources_per_worker=worker_resources(runtime),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=RunConfig(
            name=f"trial-{trial_id}",
            storage_path=str(Path(runtime["storage_path"]) / "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=checkpoint_policy(runtime, CheckpointConfig),
            failure_config=FailureConfig(max_failures=int(runtime.get("max_failures", 2))),
        ),
    )
    trainer.fit()


def checkpoint_policy(runtime: dict, config_cls):
    """Keep the best ``keep_checkpoints`` checkpoints of a trial by the study's objective (Ray also keeps the latest,
    which a retry resumes from), so the best one is still there when the trial's record is written."""
    return config_cls(num_to_keep=int(runtime.get("keep_checkpoints", 2)),
                      checkpoint_score_attribute=runtime.get("metric", OBJECTIVE),
                      checkpoint_score_order=runtime.get("mode", "max"))
