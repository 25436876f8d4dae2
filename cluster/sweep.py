"""The Tune driver: a validated search space -> OptunaSearch (define-by-run, TPE) + ASHA -> Tuner over
``trainables.trial.run_trial``, recorded in MLflow."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces.schema import SearchSpace, cv_conflict, finite_points, load_space, suggest
from trainables.prepare.folds import plan_folds
from trainables import console
from trainables.provenance import KIND_TAG, SWEEP_KIND, git_commit
from trainables.storage import default_optuna_storage
from trainables.storage import tracking_uri as resolve_tracking_uri
from trainables.errors import DataError, UserError
from trainables.trial import choose_executor

from cluster.inputs import check_pretraining_leak, resolve_model_inputs
from cluster.preflight import PreflightReport, check_objectives, preflight
from cluster.progress import ProgressPrinter
from cluster.resources import max_concurrent_trials
from cluster.records import data_fingerprint, package_versions
from cluster.retention import SNAPSHOT_PERIOD_S
from cluster.tuner import build_tuner
from cluster.tracking import MlflowTrialCallback, open_experiment


@dataclass
class SweepOptions:
    space: str = "smoke"
    data_index: str | dict[str, str] = ""
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
    resume: str | None = None
    optuna_storage: str | None = None
    keep_checkpoints: int = 2
    max_failures: int = 2
    executor: str = "auto"  # inline (one worker, in the trial process) | train (Ray Train workers) | auto
    dry_run: bool = False  # check every configuration against the data and the cluster, start nothing
    epochs: int | None = None  # cap on the epochs of every trial (the study's fidelity max otherwise)
    folds: int | None = None  # subject K-fold cross-validation (the study's cv.folds otherwise; none: one split)
    verbose: int = 0  # 0: one line per trial event; 1: Tune's status tables; 2: also every worker's log
    kind: str = "finetune"  # what the command runs: "finetune" (emotune sweep) or "pretrain" (emotune pretrain)
    # End the local Ray this sweep started once Tune is done, while the sweep's records are written (the `emotune
    # sweep` command, which exits next); in-process callers keep Ray up for what they do next.
    release_ray: bool = False


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
    preflight: PreflightReport | None = None


class DefineByRun:
    """Optuna define-by-run function of a space plus the constant trial settings; a class (not a closure) because
    Tune pickles the searcher into its experiment checkpoint."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]):
        self.space, self.constants = space, constants

    def __call__(self, trial) -> dict[str, Any]:
        return {**suggest(self.space, trial), **self.constants}


def ray_address(address: str | None = None) -> str | None:
    """The cluster a command was told to use: ``address`` (``--address``), else $RAY_ADDRESS, else None (a Ray of its
    own). ``auto`` means the cluster ``ray start`` started last on this machine, joined on purpose."""
    return address or os.environ.get("RAY_ADDRESS") or None


#: Whether ``init_ray`` started a Ray of this process's own (one ``release_ray`` may end), not joined one.
_OWN_RAY = False


def init_ray(address: str | None = None, log_to_driver: bool = True, dashboard: bool = True) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS), else start a Ray of this process's own.

    Never the machine's "latest" cluster by accident: ``ray.init()`` without an address joins the cluster ``ray
    start`` last wrote to Ray's temp folder, a bystander started for other work (the sweep then ran there, one trial
    at a time) or one that died without being shut down (``ray.init`` then waited for it for minutes). So a sweep not
    given an address starts its own with ``address="local"``; ``auto`` or host:port joins a cluster on purpose.

    A local Ray gets the dashboard when ``dashboard``: Train V2 watches its controller through the State API, which
    the dashboard serves (without it, Ray Train trials after the first hang); inline trials do without it, and Ray
    starts faster.

    Not done, measured: importing the training code in each worker process as it starts (a
    ``worker_process_setup_hook`` starting the import in a thread, joined by the trial) did not shorten a slot's
    first trial on this 2-core machine: Tune starts the trial processes only when it schedules the trials (Ray's
    prestarted workers do not match a job with a runtime environment), so the import overlapped only the actor's own
    start-up, and both are CPU-bound on the same cores (first trial's start to its first epoch 2.2 s either way)."""
    import ray

    from cluster.retries import install_retry_policy

    # Every sweep (new or resumed) starts here: a trial failing with a user error is not retried, a crash is.
    install_retry_policy()
    # Tune's default TensorBoard logger imports tensorboardX, which imports torch into the driver (about 3 s when the
    # first trial starts) and writes event files nobody reads here: MLflow holds the curves. Tune's JSON and CSV
    # records (result.json, progress.csv) are kept: ``cluster.tuner.tune_loggers`` adds them back to every Tuner.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Tune's experiment snapshot (trial states, searcher, callbacks: what --resume restores) every second instead of
    # every 10 s or more: a driver killed between two snapshots loses less (cluster.searcher and cluster.tracking
    # recover the rest), and cluster.retention deletes superseded checkpoints once a snapshot has moved past them.
    # Writing it takes a few milliseconds on a local disk.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_PERIOD_S))
    if ray.is_initialized():
        return
    address = ray_address(address)
    # Ray Train gives a worker group 60 s to start; on a loaded laptop, or while an autoscaler adds a node, starting a
    # worker process takes longer and the trial failed for nothing. Processes of a local Ray inherit this variable.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    # A local Ray: choose its GCS port here so every worker of this sweep can be told where its cluster is. Ray
    # Train's helper actors find the cluster through RAY_ADDRESS and, without it, give up when a second local Ray
    # (another sweep on the same machine) is running -- and the trial waiting on them hangs.
    import socket

    from ray._private.services import get_node_ip_address

    port = os.environ.get("RAY_GCS_SERVER_PORT")
    if not port:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = str(sock.getsockname()[1])
        os.environ["RAY_GCS_SERVER_PORT"] = port
    global _OWN_RAY
    ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
             dashboard_port=_free_port() if dashboard else None, log_to_driver=log_to_driver,
             runtime_env={"env_vars": {"RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}},
             # No idle worker processes started ahead: Ray starts one per CPU for tasks without a runtime environment,
             # and made ``ray.init`` wait until they had started, but every process of a sweep has one (this job's,
             # and Tune's for its trials), so none was ever used: Ray ended them as idle once the trials' own
             # processes started, after they had taken CPU from the start-up.
             _system_config={"prestart_worker_first_driver": False})
    _OWN_RAY = True


def sweep_log(storage: str, name: str) -> Path:
    """Where a sweep's log of other tools' output goes (``trainables.console``): its folder in a local ``--storage``,
    else ``./<name>.log`` (a log is appended to line by line, which object stores do not do)."""
    return Path(storage) / name / "emotune.log" if "://" not in storage else Path.cwd() / f"{name}.log"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_sweep(opts: SweepOptions) -> SweepOutcome:
    """Run (or, with ``opts.resume``, finish) one sweep and return its results with the MLflow ids.

    Resume: the Tune experiment ``<storage>/<name>`` is restored with its searcher state, unfinished trials continue from
    their last checkpoint (an inline trial from Tune's; a Ray Train trial's TorchTrainer has the same name and storage,
    so Train picks up its own), errored ones are retried, and the MLflow callback (pickled with the experiment) reuses each trial's
    run, so no run is duplicated and exactly ``num_samples`` trials exist at the end.
    """
    import ray

    from cluster.racing import make_scheduler

    storage = str(Path(opts.storage).resolve()) if "://" not in opts.storage else opts.storage
    if opts.resume:
        return _resume(opts, storage)

    space = cap_epochs(load_space(opts.space, opts.overrides), opts.epochs)
    if space.kind != opts.kind:
        command, noun = _kind_command(space.kind)
        raise UserError(f"{space.path} is a {noun} study (kind: {space.kind}); run it with `{command}`")
    space = with_folds(space, opts.folds)
    check_objectives(space)
    # A pretrained encoder named by MLflow URI: fetched here, so trials read a file and never talk to MLflow.
    space = resolve_model_inputs(space, storage, resolve_tracking_uri(opts.tracking_uri))
    data = resolve_data(opts.data_index, space)
    # Subject folds, planned once here (before anything starts) and handed to every trial.
    plan = plan_folds(data if isinstance(data, str) else next(iter(data.values())), space.cv["folds"],
                      seed=space.cv["seed"]) if space.cv else None
    check_pretraining_leak(space, [data] if isinstance(data, str) else list(data.values()),
                           [s for fold in plan.folds for s in fold] if plan is not None else [])
    workers = int(opts.workers if opts.workers is not None else space.resources["workers"])
    cpus = float(opts.cpus_per_worker if opts.cpus_per_worker is not None else space.resources["cpus_per_worker"])
    gpus = float(opts.gpus_per_worker if opts.gpus_per_worker is not None else space.resources["gpus_per_worker"])
    executor = choose_executor(opts.executor, workers)
    name = opts.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    per_epoch = int(space.fidelity["per_epoch"])
    units = int(space.fidelity["max"])  # reports a trial makes at most: epochs, or fractions of an epoch
    epochs = -(-units // per_epoch)
    time_attr = "epoch" if space.fidelity["attr"] == "epoch" else "step"
    constants = {("data_index" if isinstance(data, str) else "data_indexes"): data, "epochs": epochs,
                 "reports_per_epoch": per_epoch, "max_units": units}
    if plan is not None:
        # A CV trial reports once per fold-epoch: its progress runs to K x epochs.
        constants["cv"] = plan.to_config()
        time_attr, units = "fold_epochs", plan.k * units
        console.say(f"cross-validation: {plan.k} subject folds ({plan.source}): {plan.describe()}")
    # Every configuration the sweep can start, checked against the trial config and the data before Ray starts.
    checked = preflight(space, {**constants, "metric": space.metric, "mode": space.mode,
                                "threads": max(1, int(cpus)), "gpus": gpus}, seed=opts.seed)
    space = checked.space
    for line in checked.lines():
        console.say(line)
    autoscaling = bool(ray_address(opts.ray_address)) and opts.max_concurrent is not None
    # Before Ray starts: a request this machine (or the running cluster) cannot hold is refused at once.
    concurrent = max_concurrent_trials(cluster_resources(opts.ray_address), workers, cpus, gpus, opts.max_concurrent,
                                       autoscaling)
    if opts.dry_run:
        n = opts.num_samples
        console.say(f"dry run: {n} trial{'' if n == 1 else 's'} of {workers} worker(s) x {cpus:g} CPU / {gpus:g} GPU, "
                    f"{min(concurrent, n)} at a time ({executor} executor); nothing started")
        return SweepOutcome(name, None, space, storage, "", "", None, None, checked)
    if _experiment_exists(storage, name):
        raise UserError(f"a sweep named {name!r} already exists in {storage}; resume it with "
                        f"`{_kind_command(space.kind)[0]} --resume {name} --storage {opts.storage}` or choose another "
                        "--name")
    console.log_to(sweep_log(storage, name))
    tracking_uri = resolve_tracking_uri(opts.tracking_uri)
    # Opening the MLflow store (a new SQLite store creates its tables: about 2 s) and the Optuna store (its tables;
    # Optuna itself is imported by the pre-flight already) wait mostly on the databases, and starting Ray mostly on Ray's own processes: the three
    # run side by side.
    with ThreadPoolExecutor(2, thread_name_prefix="emotune-stores") as pool:
        store = pool.submit(open_experiment, tracking_uri, opts.experiment, artifact_root=Path(opts.artifact_root))
        study_store = pool.submit(open_optuna_storage, opts.optuna_storage or default_optuna_storage())
        init_ray(opts.ray_address, log_to_driver=opts.verbose >= 2, dashboard=executor == "train")
        client, experiment_id = store.result()
        optuna_storage = study_store.result()
    concurrent = max_concurrent_trials(ray.cluster_resources(), workers, cpus, gpus, opts.max_concurrent, autoscaling)

    runtime = {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus,
               "storage_path": f"{storage}/{name}", "keep_checkpoints": opts.keep_checkpoints,
               "max_failures": opts.max_failures, "executor": executor, "metric": space.metric, "mode": space.mode}
    data_index = data if isinstance(data, str) else json.dumps(data)

    parent_id = _start_parent_run(client, experiment_id, name, space, opts, data_index, concurrent,
                                  workers, executor, plan)

    searcher = make_searcher(space, opts, name, concurrent, {**constants, "runtime": runtime}, storage=optuna_storage,
                             progress=(time_attr, units))
    scheduler = make_scheduler(space, time_attr, units, cv_folds=plan.k if plan is not None else 0)
    callback = MlflowTrialCallback(tracking_uri, experiment_id, parent_id, step_key=time_attr,
                                   max_steps=units, metric=space.metric, mode=space.mode,
                                   folds=plan.folds if plan is not None else ())
    callbacks = [callback, *([ProgressPrinter(space.metric, time_attr, units)] if opts.verbose == 0 else [])]
    tuner = build_tuner(name=name, storage=storage, runtime=runtime, search_alg=searcher,
                        num_samples=opts.num_samples, concurrent=concurrent, callbacks=callbacks, scheduler=scheduler,
                        time_budget_s=opts.time_budget_s, verbose=opts.verbose)
    return _fit(tuner, name, space, storage, tracking_uri, client, callback, parent_id, checked,
                release_ray=opts.release_ray)


def _kind_command(kind: str) -> tuple[str, str]:
    """The command that runs a study of ``kind``, and the word for it."""
    return ("emotune pretrain", "pretraining") if kind == "pretrain" else ("emotune sweep", "fine-tuning")


def cap_epochs(space: SearchSpace, epochs: int | None) -> SearchSpace:
    """``space`` with at most ``epochs`` epochs per trial (``--epochs``): the fidelity's max in its own units, and the
    grace period no longer than that."""
    if epochs is None:
        return space
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    fidelity = dict(space.fidelity)
    fidelity["max"] = min(int(fidelity["max"]), epochs * int(fidelity["per_epoch"]))
    fidelity["grace"] = min(int(fidelity["grace"]), fidelity["max"])
    return dataclasses.replace(space, fidelity=fidelity)


def with_folds(space: SearchSpace, folds: int | None) -> SearchSpace:
    """``space`` cross-validated over ``folds`` subject folds (``--folds``), or as its study file says when None."""
    if folds is None:
        return space
    if folds < 2:
        raise UserError(f"--folds must be >= 2 (subject K-fold cross-validation), got {folds}")
    why = cv_conflict(space.kind, space.fidelity["attr"], len(space.objectives))
    if why:
        raise UserError(f"--folds: {why} (study {space.name})")
    return dataclasses.replace(space, cv={"folds": folds, "seed": space.cv.get("seed", 0)})


def cluster_resources(address: str | None) -> dict[str, float]:
    """CPUs and GPUs of the cluster at ``address`` (or $RAY_ADDRESS), else of this machine, without starting Ray."""
    import ray

    if ray_address(address):
        init_ray(address, log_to_driver=False)
        return ray.cluster_resources()
    return {"CPU": float(os.cpu_count() or 1), "GPU": local_gpus()}


def local_gpus() -> float:
    """GPUs a local Ray will give this machine, found as Ray finds them (NVML, then ``CUDA_VISIBLE_DEVICES``) and
    without importing torch in the driver (about 3 s of start-up)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # Ray moved its detection: ask torch, as before
        import torch

        return float(torch.cuda.device_count())
    return float(count if visible is None else min(count, len(visible)))


def open_optuna_storage(url: str):
    """The Optuna RDB storage at ``url``, its tables created if absent."""
    import optuna

    from cluster.stores import first_connection

    with first_connection(url):  # another sweep may be creating the same store right now
        return optuna.storages.RDBStorage(url)


def make_searcher(space: SearchSpace, opts: SweepOptions, name: str, concurrent: int, constants: dict[str, Any],
                  storage, progress: tuple[str, int] | None = None):
    """OptunaSearch over the space's define-by-run function, its study kept in an RDB storage (SQLite by default,
    which optuna-dashboard opens) under the sweep's name. The TPE sampler is seeded: the same seed gives the same
    suggestions. No configuration is trained twice (``cluster.searcher``). ``storage``: the study's store, already
    opened (``open_optuna_storage``). ``progress``: the scheduler's time attribute and a whole trial's units; a trial
    stopped below them is told to Optuna as PRUNED."""
    from cluster.searcher import DistinctOptunaSearch

    several = len(space.objectives) > 1
    return DistinctOptunaSearch(space=DefineByRun(space, constants),
                                metric=[m for m, _ in space.objectives] if several else space.metric,
                                mode=[mode for _, mode in space.objectives] if several else space.mode,
                                sampler=make_sampler(space.sampler, opts.seed, concurrent, opts.num_samples),
                                study_name=name, storage=storage,
                                points_to_evaluate=[dict(p) for p in space.initial_points] or None,
                                points=finite_points(space), seed=opts.seed,
                                progress_attr=progress[0] if progress else None,
                                max_progress=progress[1] if progress else None)


def make_sampler(name: str, seed: int, concurrent: int, budget: int):
    """The study's Optuna sampler by name, seeded. TPE (one objective or several) starts from
    ``max(2, concurrent)`` random trials. NSGA-II's population is sized to the budget: ``max(4, budget // 4)``
    (judgment call: at least four generations within the trials asked for, where Optuna's default of 50 would spend
    a small sweep on its first, random generation)."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, budget // 4), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, concurrent))


def resolve_data(data: str | dict[str, str], space: SearchSpace) -> str | dict[str, str]:
    """The dataset index a sweep trains on, or one index per registration setting (``--data coarse=a.json --data
    fine=b.json``) when the study searches ``registration``; every path checked, every searched setting covered."""
    if isinstance(data, str):
        data = {"": data}
    out = {}
    for key, path in data.items():
        if not Path(path).is_file():
            raise DataError(f"dataset index {path!r} not found; run `emotune data prepare` first")
        out[key] = str(Path(path).resolve())
    if list(out) == [""]:
        if "registration" in space.params and space.params["registration"]["type"] != "constant":
            raise UserError(f"study {space.name} searches 'registration'; give one dataset index per setting "
                             f"(--data coarse=INDEX --data fine=INDEX) or pin it (--set registration=coarse)")
        return out[""]
    wanted = _values_of(space, "registration")
    missing = [w for w in wanted if w not in out]
    if missing:
        raise UserError(f"no dataset index for registration {missing}; given: {sorted(out)}")
    return out


def _values_of(space: SearchSpace, key: str) -> list:
    if key in space.fixed:
        return [space.fixed[key]]
    spec = space.params.get(key)
    if spec is None:
        return []
    return spec["choices"] if spec["type"] == "categorical" else [spec.get("value")]


def _experiment_exists(storage: str, name: str) -> bool:
    from ray import tune

    try:
        return tune.Tuner.can_restore(f"{storage}/{name}")
    except Exception:  # an unreachable remote storage is reported when the sweep writes to it
        return False


def _start_parent_run(client, experiment_id: str, name: str, space: SearchSpace, opts: SweepOptions,
                      data_index: str, concurrent: int, workers: int, executor: str, plan=None) -> str:
    from mlflow.entities import Param

    parent = client.create_run(experiment_id, run_name=name, tags={
        KIND_TAG: SWEEP_KIND, "emotune.sweep": name, "emotune.space": space.name, "emotune.space_file": space.path.name,
        "emotune.overrides": json.dumps(opts.overrides, default=str),
        "emotune.epochs": str(opts.epochs or ""),
        "emotune.cv_folds": str(plan.k if plan is not None else ""),
        "emotune.objectives": json.dumps([list(o) for o in space.objectives]),
        "emotune.git_commit": git_commit(),
        "emotune.command": " ".join(sys.argv)})
    parent_id = parent.info.run_id
    client.log_artifact(parent_id, str(space.path))
    client.log_dict(parent_id, {"options": {k: v for k, v in vars(opts).items()}, "argv": sys.argv,
                                "packages": package_versions()}, "sweep.json")
    params = {"space": space.name, "num_samples": opts.num_samples, "max_concurrent": concurrent, "seed": opts.seed,
              "workers": workers, "executor": executor, "data_index": data_index,
              **data_fingerprint(data_index if not data_index.startswith("{") else next(iter(json.loads(
                  data_index).values())))}
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in params.items()])
    if plan is not None:  # the fold assignment every trial used
        client.log_dict(parent_id, plan.to_config(), "folds.json")
    return parent_id


def _resume(opts: SweepOptions, storage: str) -> SweepOutcome:
    from ray import tune

    from cluster.tuner import trainable

    name = opts.resume
    path = f"{storage}/{name}"
    if not _experiment_exists(storage, name):
        raise UserError(f"no sweep named {name!r} in {storage} to resume")
    console.log_to(sweep_log(storage, name))
    init_ray(opts.ray_address, log_to_driver=opts.verbose >= 2)
    tuner = tune.Tuner.restore(path, trainable(), resume_unfinished=True, resume_errored=True)
    run_config = tuner._local_tuner.get_run_config()
    callback = next(c for c in run_config.callbacks if isinstance(c, MlflowTrialCallback))
    client = callback.client
    parent = client.get_run(callback.parent_run_id)
    # The study as the sweep started it: its file (logged on the parent run) and its --set overrides.
    with tempfile.TemporaryDirectory(prefix="emotune-space-") as tmp:
        space_file = client.download_artifacts(callback.parent_run_id, parent.data.tags["emotune.space_file"], tmp)
        space = load_space(space_file, json.loads(parent.data.tags.get("emotune.overrides", "{}")))
    if space.kind != opts.kind:
        # Each command finishes its own kind: `emotune pretrain` registers the encoder a pretraining sweep ends with,
        # which `emotune sweep` would not; `emotune pretrain` would register a fine-tuned model as an encoder.
        command, noun = _kind_command(space.kind)
        raise UserError(f"{name!r} is a {noun} sweep; resume it with `{command} --resume {name} --storage "
                        f"{opts.storage}`")
    space = cap_epochs(space, int(parent.data.tags["emotune.epochs"]) if parent.data.tags.get("emotune.epochs") else None)
    space = with_folds(space, int(parent.data.tags["emotune.cv_folds"]) if parent.data.tags.get("emotune.cv_folds")
                       else None)
    client.set_tag(callback.parent_run_id, "emotune.resumed", time.strftime("%Y-%m-%d %H:%M:%S"))
    return _fit(tuner, name, space, storage, callback.tracking_uri, client, callback, callback.parent_run_id,
                release_ray=opts.release_ray)


def _fit(tuner, name, space, storage, tracking_uri, client, callback, parent_id,
         checked: PreflightReport | None = None, release_ray: bool = False) -> SweepOutcome:
    status = "FAILED"
    best_trial = best_run = None
    ending = None
    try:
        results = tuner.fit()
        ending = _end_own_ray() if release_ray else None
        best_trial, best_run = _record_best(results, space, client, callback, parent_id)
        status = "FINISHED"
    finally:
        # The trials' records are written in the background (cluster.tracking): finish them before the sweep's own.
        # A sweep stopped by a dead driver stays RUNNING until --resume finishes it; failures end it FAILED.
        try:
            callback.flush()
        finally:
            client.set_terminated(parent_id, status)
            if ending is not None:
                ending.join()
    return SweepOutcome(name, results, space, Path(storage) if "://" not in storage else storage, tracking_uri,
                        parent_id, best_trial, best_run, checked)


def _end_own_ray():
    """Shut down the local Ray this process started, in a thread that the caller joins; None if Ray was joined by
    address (a cluster not ours to end).

    Ray's own shut-down at exit sleeps 0.5 s first (so that workers' log lines reach the driver) and then ends its
    processes one after another, waiting for each: about 1.5 s after the last trial, which the sweep's records
    (MLflow's last writes, the best trial's tags) waited behind. Once ``Tuner.fit`` has returned nothing needs Ray:
    the results are in memory and the records go to MLflow, so Ray ends while they are written. Its processes are
    ended by Ray's own ``ray.shutdown``, as at exit, and the caller joins the thread before the command goes on.

    Except one: Ray ends its processes one by one, each given a second to exit after SIGTERM, and its autoscaler
    monitor answers SIGTERM by writing an error record to the GCS, which Ray has ended just before: it never exited
    in time, and every sweep waited that second (measured: 1.01 s of a 1.15 s shut-down). A local Ray's monitor keeps
    nothing a sweep needs, so it is killed first (:func:`_kill_autoscaler_monitor`)."""
    import threading

    import ray

    if not _OWN_RAY or not ray.is_initialized():
        return None

    def shutdown() -> None:
        global _OWN_RAY
        _OWN_RAY = False
        _kill_autoscaler_monitor()
        ray.shutdown()

    thread = threading.Thread(target=shutdown, name="emotune-ray-shutdown")
    thread.start()
    return thread


def _kill_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the local Ray this process started (see :func:`_end_own_ray`); nothing if Ray
    no longer names it where it did (``ray.shutdown`` then ends it as before)."""
    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node

        monitors = _global_node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if _global_node else []
    except (ImportError, AttributeError):
        return
    import subprocess

    for info in monitors:
        if info.process.poll() is None:
            info.process.kill()
            try:
                info.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # ray.shutdown reaps it, as it would have
                pass


def best_result(results, metric: str, mode: str, folds: int = 0):
    """The result holding the best report of the sweep, or None. A trial that errored is never best (whatever it
    reported before the error), nor is a diverged report (it carries the objective's worst value). In a CV sweep
    (``folds`` > 0) only trials that finished every fold are ranked, by their last report (the mean over folds)."""
    best = None
    for result in results:
        if folds:
            last = result.metrics or {}
            if result.error is not None or last.get("folds_done") != folds or last.get("diverged"):
                continue
            value = float(last[metric])
            if best is None or (value > best[0] if mode == "max" else value < best[0]):
                best = (value, result)
            continue
        df = result.metrics_dataframe
        if result.error is not None or df is None or metric not in df:
            continue
        if "diverged" in df:
            df = df[df["diverged"] != 1]
        values = df[metric].dropna()
        if values.empty:
            continue
        value = float(values.max() if mode == "max" else values.min())
        if best is None or (value > best[0] if mode == "max" else value < best[0]):
            best = (value, result)
    return None if best is None else best[1]


def _record_best(results, space: SearchSpace, client, callback: MlflowTrialCallback, parent_id: str):
    """Tag the parent run with the best trial (by its best report) and that run's id."""
    best = best_result(results, space.metric, space.mode, space.cv.get("folds", 0))
    if best is None:
        return None, None
    trial_id = best.metrics.get("trial_id")
    run_id = callback.run_id(trial_id)
    value = callback.best.get(trial_id, (None, None))[0]
    if run_id:
        client.set_tag(parent_id, "emotune.best_trial", trial_id)
        client.set_tag(parent_id, "emotune.best_run_id", run_id)
    if value is not None:
        client.log_metric(parent_id, f"best_{space.metric}", value)
    return trial_id, run_id
