"""The Tune function: one trial = one Ray Train run of ``train_loop_per_worker``.

Why this shape (measured on a 2-CPU machine with Ray 2.60, whose Train V2 is the default):
* Train V2 inside Tune is supported as a Tune *function* that builds and fits a ``TorchTrainer`` with
  ``TuneReportCallback`` (the deprecated ``Tuner(TorchTrainer)`` path is not used).
* The trial function only waits on its trainer, so it must not hold a CPU: with Tune's default of 1 CPU per trial, two
  concurrent trials took both CPUs and their 1-CPU workers never started (a hang). Tune refuses an empty request, so the
  trial reserves memory only (``TRIAL_DRIVER_RESOURCES``) and the CPUs/GPUs go to the workers; the sweep caps concurrent
  trials at what the workers can fill (see ``cluster.resources``).
* Train V2 watches its controller through Ray's State API, which needs the dashboard: the driver starts Ray with the
  dashboard on, or later trials hang after the first one finishes.
The same function scales unchanged to multi-worker DDP trials on GPUs: only ``runtime.workers`` and the per-worker
resources change.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainables.loop import OBJECTIVE, train_loop_per_worker

# 256 MiB: what the waiting trial process needs; nonzero so that Tune accepts the request.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}


def run_trial(config: dict) -> None:
    """Fit one configuration with a TorchTrainer; ``config["runtime"]`` holds the resources and storage."""
    import ray
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # Train polls its controller through the State API, which finds the cluster via RAY_ADDRESS or, failing that,
    # refuses to choose when two local Ray instances run on one machine: point it at the cluster this trial is in.
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    runtime = config["runtime"]
    trial_id = ray.tune.get_context().get_trial_id()
    gpus = float(runtime.get("gpus_per_worker", 0))
    scaling = ScalingConfig(
        num_workers=int(runtime.get("workers", 1)),
        use_gpu=gpus > 0,
        resources_per_worker={"CPU": float(runtime.get("cpus_per_worker", 1)), **({"GPU": gpus} if gpus else {})},
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**{k: v for k, v in config.items() if k != "runtime"},
                           "threads": max(1, int(runtime.get("cpus_per_worker", 1)))},
        scaling_config=scaling,
        run_config=RunConfig(
            name=f"trial-{trial_id}",
            storage_path=str(Path(runtime["storage_path"]) / "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=int(runtime.get("keep_checkpoints", 2)),
                                               checkpoint_score_attribute=OBJECTIVE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=int(runtime.get("max_failures", 2))),
        ),
    )
    trainer.fit()
