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
dashboard: for Ray Train trials the driver starts a local Ray with the dashboard on, or later trials hang after the
first one finishes (inline trials do without it).
"""
from __future__ import annotations

import gc
import os
import time

from trainables.errors import ConfigError, find_user_error  # noqa: F401  (find_user_error: used below)

# 256 MiB: what the waiting trial process needs; nonzero so that Tune accepts the request.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
EXECUTORS = ("auto", "inline", "train")


def choose_executor(requested: str, workers: int) -> str:
    """``inline`` or ``train`` for a sweep whose trials have ``workers`` workers.

    Raises:
        ConfigError: an unknown executor, or ``inline`` with more than one worker.
    """
    if requested not in EXECUTORS:
        raise ConfigError(f"unknown executor {requested!r}; choose one of {', '.join(EXECUTORS)}")
    if requested == "auto":
        return "inline" if workers == 1 else "train"
    if requested == "inline" and workers != 1:
        raise ConfigError(f"the inline executor runs one worker per trial (got workers={workers}); use --executor train "
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
    """Fit one configuration; ``config["runtime"]`` holds the executor, resources and storage.

    A user error anywhere in the trial (raised directly, chained under another exception, or raised by a Ray Train
    worker) leaves the trial as itself, so the driver sees it as the trial's error and does not retry the trial
    (``cluster.retries``). This is done here because exception chains do not survive Ray's pickling to the driver.
    """
    try:
        _fit_trial(config)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or user_error is err:
            raise
        raise user_error from err


def _fit_trial(config: dict) -> None:
    entered = time.time()
    # Imported here, not at the top: the sweep's driver imports this module for its Tune function and resources, and
    # the training loop (torch, timm, the models) is needed only where a trial trains.
    from trainables.loop import train_in_trial, train_loop_per_worker

    runtime = config["runtime"]
    gpus = float(runtime.get("gpus_per_worker", 0))
    loop_config = {**{k: v for k, v in config.items() if k != "runtime"},
                   "threads": max(1, int(runtime.get("cpus_per_worker", 1))), "gpus": gpus,
                   # the study's objective: what a diverged trial reports at its worst value
                   "metric": runtime["metric"], "mode": runtime["mode"]}
    if runtime.get("executor") == "inline":
        freeze_imports()
        train_in_trial(loop_config, marks={"trial_entered_at": entered})
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
            storage_path=f"{str(runtime['storage_path']).rstrip('/')}/train",  # a URI (s3://) is no Path
            callbacks=[TuneReportCallback()],
            checkpoint_config=checkpoint_policy(runtime, CheckpointConfig),
            failure_config=FailureConfig(max_failures=int(runtime.get("max_failures", 2))),
        ),
    )
    # A worker's user error reaches run_trial inside Train's WorkerGroupError; Ray Train has retried the run
    # max_failures times by then (Train V2 has no per-exception switch either).
    trainer.fit()


_IMPORTS_FROZEN = False


def freeze_imports() -> None:
    """Set every object alive in this process now aside from the cyclic garbage collector, once per process: called by
    an inline trial process's first trial, once the training code is imported and before the trial builds anything.

    The objects of the imported modules (torch with torch._dynamo, torchvision, timm, Ray: about 420 000) live as long
    as the process, yet every full collection walked all of them, holding the GIL: a reused trial process collects
    when each trial ends (``trainables.loop.train_in_trial``), which took 1.3 to 2.2 s in the overhead benchmark's
    trials on a busy 2-core machine (0.7 s right after the import, load ~20). Meanwhile the process answered none of
    Tune's calls: the last report's checkpoint, the stop and the next trial's reset waited for it. Frozen, they are no
    longer walked, and the collection takes about a millisecond. Only what exists before the first trial is frozen;
    every trial's own objects are collected as before."""
    global _IMPORTS_FROZEN
    if not _IMPORTS_FROZEN:
        _IMPORTS_FROZEN = True
        gc.freeze()


def checkpoint_policy(runtime: dict, config_cls):
    """Keep the best ``keep_checkpoints`` checkpoints of a Ray Train trial by the study's objective (Ray also keeps the
    latest, which a retry resumes from), so the best one is still there when the trial's record is written. (Inline
    trials are Tune's to keep: ``cluster.retention``.)"""
    return config_cls(num_to_keep=int(runtime.get("keep_checkpoints", 2)),
                      checkpoint_score_attribute=runtime["metric"],
                      checkpoint_score_order=runtime["mode"])


#: Seconds a reused trial process waits for the previous trial's training thread to end before it gives up on reusing
#: the process (Ray's own wait, ``TUNE_FUNCTION_THREAD_TIMEOUT_S``, is 2 s).
REUSE_TIMEOUT_ENV = "EMOTUNE_REUSE_TIMEOUT_S"
DEFAULT_REUSE_TIMEOUT_S = 120.0


class ProcessStillBusy(RuntimeError):
    """The previous trial's training thread did not end in time, so this process is not reused: Tune retries the
    trial in a new process."""


class ReusableTrial:
    """Mixin for Tune's function trainable (``run_trial.__mixins__``): a reused trial process never loses a trial.

    With ``reuse_actors`` (inline trials) Tune gives a stopped trial's process to the next trial and calls its
    ``reset_config``. Ray's ``FunctionTrainable.reset_config`` waits ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s) for the
    previous trial's training thread to end and otherwise returns False; ``TuneController._on_trial_reset`` then marks
    the *new* trial ERROR ("Trainable runner reuse requires reset_config() ...") without starting it, without a retry,
    and without telling the searcher, the scheduler or the callbacks. So the trial got no MLflow run, and the
    ``ConcurrencyLimiter`` that ``max_concurrent_trials`` puts around the searcher kept counting it as live: once the
    lost trials filled every slot, the searcher suggested nothing, ``TuneController._update_trial_queue`` waited for a
    trial forever and the sweep sat idle. On a busy machine the thread did need more than 2 s to end (it wakes from
    ``report``, unwinds the loop and collects garbage while other processes hold the cores).

    Here ``reset_config`` never returns False:

    * it waits up to ``EMOTUNE_REUSE_TIMEOUT_S`` (default 120 s) for the thread. A thread parked in ``report`` (how
      ASHA stops a trial) ends as soon as it runs; one stopped mid-epoch ends at its next batch
      (``TuneTrialSession.should_stop``), so the wait is short;
    * if the thread is still alive after that (stuck), the process is not reused: the reset succeeds but the new
      trial's first step raises :class:`ProcessStillBusy`, a failure of a running trial, which Tune handles like a
      crash: the trial is restarted in a new process (counted against ``--max-failures``) and the stuck process ends.
    """

    _previous_thread_alive = False

    def reset_config(self, new_config):
        import logging

        from ray.train._internal.session import get_session

        session = get_session()
        if session is not None and session.training_started:
            session.finish(timeout=reuse_timeout())  # sets the stop request and waits for the thread
            if session.training_thread.is_alive():
                self._previous_thread_alive = True
                logging.getLogger(__name__).warning(
                    "the previous trial's training thread is still running after %.0f s; trial %s restarts in a new "
                    "process", reuse_timeout(), self.trial_id)
                return True
        self._previous_thread_alive = False
        return super().reset_config(new_config)

    def step(self):
        if self._previous_thread_alive:
            raise ProcessStillBusy(f"the previous trial's training thread in this process did not end within "
                                   f"{reuse_timeout():.0f} s ({REUSE_TIMEOUT_ENV}); retrying in a new process")
        return super().step()


def reuse_timeout() -> float:
    return float(os.environ.get(REUSE_TIMEOUT_ENV, DEFAULT_REUSE_TIMEOUT_S))


# Tune's ``wrap_function`` builds the function trainable with the classes listed here in front of FunctionTrainable.
run_trial.__mixins__ = (ReusableTrial,)
