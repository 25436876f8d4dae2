"""The commands that run on Ray: ``emotune sweep``, ``emotune settings`` (the trial settings a sweep can set) and
``emotune promote`` (with ``--retrain-top``, the top configurations are trained again here before
:func:`analysis.promote.promote` decides). Each takes the parsed arguments of :mod:`cluster.cli`'s parser and returns
the exit status."""
from __future__ import annotations

from trainables.console import say
from trainables.errors import UserError


def print_outcome(outcome, max_epochs: int) -> dict[str, int]:
    """The sweep's leaderboard, where its records are, its best trial; returns the number of trials per status. A
    sweep with several objectives lists its Pareto front first (``analysis.leaderboard.rank_by_fronts``), as its
    report does."""
    from analysis.leaderboard import STATUSES, format_leaderboard, rows_from_results

    params = list(outcome.space.params)
    key = "epoch" if outcome.space.fidelity["attr"] == "epoch" else "step"
    folds = int((outcome.space.cv or {}).get("folds", 0))
    objectives = tuple(getattr(outcome.space, "objectives", ()) or ())
    rows = rows_from_results(outcome.results, outcome.space.metric, outcome.space.mode, params, max_epochs,
                             epoch_key=key, folds=folds, objectives=objectives)
    say()
    over = f", mean over {folds} subject folds" if folds else ""
    if len(objectives) > 1:
        what = "objectives " + ", ".join(f"{m} ({mode})" for m, mode in objectives) + ", the Pareto front first"
    else:
        what = f"objective {outcome.space.metric}{over}"
    say(f"Leaderboard of sweep {outcome.name} ({len(rows)} trials, {what}):")
    say(format_leaderboard(rows, outcome.space.metric, steps_label="epochs" if key == "epoch" else "reports"))
    say()
    say(f"MLflow store:  {outcome.tracking_uri}  (parent run {outcome.parent_run_id})")
    if outcome.tracking_uri.startswith("sqlite:///"):
        say(f"  open it with: mlflow ui --backend-store-uri {outcome.tracking_uri} --port 5000")
    say(f"Ray results:   {outcome.storage}/{outcome.name}")
    if outcome.best_trial_id:
        say(f"Best trial:    {outcome.best_trial_id} (checkpoint logged to MLflow run {outcome.best_run_id})")
    else:
        say("Best trial:    none (no trial finished without an error)")
    counts = {status: sum(r.status == status for r in rows) for status in STATUSES}
    say("Trials:        " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return counts


def sweep_exit_status(counts: dict[str, int]) -> int:
    """1 when any trial errored or none finished (complete or stopped early), else 0."""
    finished = counts["complete"] + counts["stopped early"]
    return 1 if counts["errored"] or not finished else 0


def cmd_sweep(a, kind: str = "finetune") -> int:
    outcome, counts = _run_sweep_command(a, kind)
    return 0 if counts is None else sweep_exit_status(counts)


def cmd_pretrain(a) -> int:
    """``emotune pretrain``: a pretraining study run as a sweep; its best trial's encoder becomes a new version of the
    registered model ``--register-as`` with the alias ``--alias`` (:func:`analysis.registry.register_pretrained`)."""
    if a.alias == "latest":
        raise UserError("pretrain: MLflow reserves the alias 'latest'; choose another --alias")
    outcome, counts = _run_sweep_command(a, "pretrain")
    if counts is None:
        return 0
    if outcome.best_run_id:
        from mlflow.tracking import MlflowClient

        from analysis.registry import register_pretrained

        client = MlflowClient(outcome.tracking_uri, registry_uri=outcome.tracking_uri)
        version, new = register_pretrained(client, a.register_as, outcome.best_run_id, a.alias,
                                           tags={"emotune.sweep": outcome.name, "emotune.trial": outcome.best_trial_id})
        from trainables.backbone_catalog import backbone_arguments

        backbone = client.get_run(outcome.best_run_id).data.params.get("backbone", "")
        # The encoder goes where the backbone takes a pretrained part: a pretext model's (3D-conv ResNet) or a whole
        # self-supervised checkpoint (video transformers).
        key = "pretext_checkpoint" if "pretext_checkpoint" in backbone_arguments(backbone) else "checkpoint"
        say(f"Registered:    {a.register_as} version {version} (alias {a.alias}"
            f"{'' if new else ', already: nothing new to register'}); fine-tune {backbone} from it with "
            f"--set {key}=models:/{a.register_as}@{a.alias}")
    return sweep_exit_status(counts)


def _run_sweep_command(a, kind: str):
    """Run the sweep the arguments describe; (outcome, trial counts), the counts None for a dry run."""
    from cluster.sweep import SweepOptions, run_sweep

    if not a.resume and not a.data:
        raise UserError(f"{a.command}: --data is required (the dataset index from `emotune data prepare`)")

    data = a.data or []
    if len(data) == 1 and "=" not in data[0]:
        data = data[0]
    else:
        data = dict(item.split("=", 1) for item in data) if all("=" in d for d in data) else data
        if isinstance(data, list):
            raise UserError("sweep: several --data need NAME=INDEX each (e.g. --data coarse=a.json --data fine=b.json)")
    opts = SweepOptions(space=a.space, data_index=data, num_samples=a.trials, max_concurrent=a.max_concurrent,
                        workers=a.workers, cpus_per_worker=a.cpus_per_worker, gpus_per_worker=a.gpus_per_worker,
                        storage=a.storage, name=a.name, seed=a.seed, time_budget_s=a.time_budget,
                        tracking_uri=a.mlflow_uri, experiment=a.experiment, overrides=dict(a.overrides),
                        resume=a.resume, optuna_storage=a.optuna_storage, keep_checkpoints=a.keep_checkpoints,
                        max_failures=a.max_failures, executor=a.executor, verbose=a.verbose, dry_run=a.dry_run,
                        epochs=a.epochs, folds=a.folds, ray_address=a.address, release_ray=True, kind=kind)
    outcome = run_sweep(opts)
    if a.dry_run:
        return outcome, None
    return outcome, print_outcome(outcome, int(outcome.space.fidelity["max"]))


def cmd_settings(a) -> int:
    from trainables.config import describe

    rows = [("setting", "group", "default", "allowed"), *describe()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def cmd_promote(a) -> int:
    """``emotune promote``: with ``--retrain-top K``, the sweep's K best configurations are trained again first
    (:func:`cluster.retrain.retrain_top`, on Ray) and the chosen run is the candidate; a cross-validated sweep's best
    configuration is refit on every non-test subject first (:func:`cluster.retrain.refit_best`, on Ray) and the refit
    is the candidate. With ``--constraint``, the candidate is the best complete trial meeting every constraint
    (:func:`analysis.constraints.choose`; a cross-validated sweep's is refit); no trial meeting them is a user error
    before anything runs. ``--history`` prints the recorded moves of the alias instead. The decision, the scoring and
    the registry are :mod:`analysis`'s."""
    from mlflow.tracking import MlflowClient

    from analysis.promote import find_sweep, history, promote
    from analysis.sweeps import cv_folds
    from trainables.storage import existing_store

    constraints = list(getattr(a, "constraints", None) or [])
    if getattr(a, "history", False):
        if a.sweep or constraints or a.retrain_top:
            raise UserError("promote --history prints the recorded moves of the alias of --model-name; it takes no "
                            "SWEEP, --constraint or --retrain-top")
        uri = existing_store(a.mlflow_uri)
        say(history(MlflowClient(uri, registry_uri=uri), a.model_name))
        return 0
    if not a.sweep:
        raise UserError("promote needs SWEEP (a sweep name or its MLflow parent run id), or --history")
    if constraints and a.retrain_top:
        raise UserError("--constraint and --retrain-top do not go together: --retrain-top trains the sweep's best "
                        "configurations again whatever they cost; give one of them")
    uri = existing_store(a.mlflow_uri)
    client = MlflowClient(uri, registry_uri=uri)
    parent = find_sweep(client, a.sweep)
    chosen = None
    if constraints:
        from analysis.constraints import choose
        from analysis.sweeps import load_sweep

        chosen = choose(load_sweep(client, parent.info.run_id, metrics=tuple(c.name for c in constraints)),
                        constraints)
    retrained = refit = None
    if cv_folds(parent):
        if a.retrain_top:
            raise UserError(f"--retrain-top does not apply to sweep {a.sweep!r}: it is cross-validated (every trial "
                            f"was scored on {cv_folds(parent)} subject folds), and `emotune promote {a.sweep}` refits "
                            f"its best configuration on every non-test subject")
        from cluster.retrain import refit_best

        refit = refit_best(client, parent.info.run_id, uri, ray_address=a.address,
                           trial=None if chosen is None else (chosen.run_id, chosen.trial_id))
    elif a.retrain_top:
        from cluster.retrain import retrain_top

        retrained = retrain_top(client, parent.info.run_id, uri, a.retrain_top, a.seeds, a.max_concurrent,
                                ray_address=a.address)
    outcome = promote(a.sweep, uri, model_name=a.model_name, margin=a.margin, out_dir=a.out, retrained=retrained,
                      refit=refit, chosen=chosen, constraints=constraints)
    say(outcome.message)
    if not outcome.promoted:
        return 1
    say(f"production.yaml: {outcome.yaml_path}")
    return 0
