"""The one way a Ray Tune run of emotune trials is set up, for a sweep and for the retraining of its top
configurations alike: the trial function with its resources, the MLflow records, checkpoint retention in step with
Tune's snapshots, Tune's JSON/CSV records, reuse of inline trial processes, retries, and short trial folder names."""
from __future__ import annotations

from typing import Any

from cluster.retention import tune_checkpointing


def build_tuner(*, name: str, storage: str, runtime: dict, search_alg: Any, num_samples: int, concurrent: int,
                callbacks: list, scheduler: Any = None, time_budget_s: float | None = None, verbose: int = 0,
                function: Any = None):
    """A ``tune.Tuner`` over ``trainables.trial.run_trial``.

    Args:
        function: another trial function with its resources, run the same way (a benchmark that replays recorded
            trial results through the sweep's searcher and scheduler).
        runtime: the trials' runtime settings (``executor``, ``max_failures``, ``keep_checkpoints``, ``metric``,
            ``mode``, ...), as every trial's config carries them.
        callbacks: the MLflow callback first (and a progress printer, if any); retention and Tune's loggers are added.
    """
    from ray import tune

    checkpointing, retention = tune_checkpointing(runtime)
    return tune.Tuner(
        function or trainable(),
        tune_config=tune.TuneConfig(metric=runtime["metric"], mode=runtime["mode"], search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples, max_concurrent_trials=concurrent,
                                    time_budget_s=time_budget_s, trial_dirname_creator=trial_dirname,
                                    # inline trials: the next trial reuses a finished trial's process (imports done)
                                    reuse_actors=runtime.get("executor") == "inline"),
        run_config=tune.RunConfig(name=name, storage_path=storage,
                                  callbacks=[*callbacks[:1], retention, *tune_loggers(), *callbacks[1:]],
                                  failure_config=tune.FailureConfig(max_failures=int(runtime.get("max_failures", 2))),
                                  checkpoint_config=checkpointing, verbose=min(verbose, 1)),
    )


def tune_loggers() -> list:
    """Tune's per-trial records, result.json and progress.csv (what ``ResultGrid`` and the benchmarks read), without
    its TensorBoard logger (see ``cluster.sweep.init_ray``)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def trainable():
    """The trial function with its resources; they follow each trial's executor (in its config), so a restored sweep
    sizes its trials as it did."""
    from ray import tune

    from trainables.trial import run_trial, trial_resources

    return tune.with_resources(run_trial, trial_resources)


def trial_dirname(trial) -> str:
    # Tune's default folder name repeats the whole config and overflows path limits with long values.
    return f"trial-{trial.trial_id}"
