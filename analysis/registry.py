"""The MLflow model registry: a model bundle logged as a pyfunc model (:mod:`analysis.pyfunc_model`) in a run of its
own, registered under a name and given the alias ``production``.

Every move of the alias is recorded on the registered model, as one tag per move: ``emotune.alias_move.<version>``
(the version that received the alias, zero-padded to six digits so the keys sort as the versions do) holding a JSON
object: ``time`` (UTC, ISO 8601), ``alias``, ``version``, ``replaced`` (the version that held the alias before, or
null), and what the promotion passed: ``sweep``, ``trial``, ``test`` (the objective, its value and the interval when
there is one), ``costs`` (:func:`analysis.sweeps.run_costs` of the registered run), ``constraints``, and the runs it
came from. One tag per move keeps each value small (a registry caps a tag's length) however many moves there are, and
the record stays with the model when a version is deleted. ``emotune promote --history`` prints them
(:func:`moves`). A version registered before emotune recorded moves has no record.

Every call goes through an ``MlflowClient`` on the given store; the pyfunc model is written with
``mlflow.pyfunc.save_model`` into a temporary folder and uploaded with the client, so nothing here depends on, or
changes, the process's MLflow settings (tracking URI, registry URI, active run, ``MLFLOW_*`` variables).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from trainables.provenance import KIND_TAG, PROMOTION_KIND

ALIAS = "production"
#: The registered-model tag of each move of the alias: ``MOVE_TAG + <version, 6 digits>``.
MOVE_TAG = "emotune.alias_move."


def production_version(client, name: str):
    """The model version holding the ``production`` alias, or None."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except Exception:
        return None


def register(client, bundle, model_name: str, tags: dict, production: dict, experiment_id: str,
             alias: str = ALIAS, move: dict | None = None) -> str:
    """Log ``bundle`` as a pyfunc model in a new run (kind ``promotion``), register it as ``model_name`` and give it
    ``alias``, recording the move (``move``: what to say of it besides its time and versions; module docstring);
    returns the version. ``client`` must be an ``MlflowClient`` whose registry is its tracking store."""
    import warnings

    import mlflow.pyfunc
    import yaml

    from analysis import pyfunc_model

    with tempfile.TemporaryDirectory(prefix="emotune-promote-") as tmp:
        bundle_path = bundle.save(Path(tmp) / "bundle.pt")
        (Path(tmp) / "production.yaml").write_text(yaml.safe_dump(production, sort_keys=False))
        with warnings.catch_warnings():
            # MLflow suggests an input example; the signature (a ``video`` column of paths, the ``detector`` param)
            # already states the input, and an example would have to be a real video.
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            mlflow.pyfunc.save_model(
                path=str(Path(tmp) / "model"), python_model=pyfunc_model.__file__,
                artifacts={"bundle": str(bundle_path), "production": str(Path(tmp) / "production.yaml")},
                signature=pyfunc_model.signature(), pip_requirements=["emotune"])
        run = client.create_run(experiment_id, run_name=f"promote-{tags.get('emotune.trial', '')}",
                                tags={**tags, "emotune.promotion": "true", KIND_TAG: PROMOTION_KIND})
        run_id = run.info.run_id
        status = "FAILED"
        try:
            client.log_dict(run_id, production, "production.json")
            client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
            status = "FINISHED"
        finally:
            client.set_terminated(run_id, status)
    return new_version(client, model_name, f"{run.info.artifact_uri}/model", run_id, tags, alias,
                       {**(move or {}), "promotion_run_id": run_id})


def new_version(client, model_name: str, source: str, run_id: str, tags: dict, alias: str, move: dict) -> str:
    """Register ``source`` (artifacts of run ``run_id``) as a new version of ``model_name`` (created if need be), move
    ``alias`` to it and record the move (``move``: what to say of it); returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
    before = _alias_version(client, model_name, alias)
    client.set_registered_model_alias(model_name, alias, mv.version)
    record_move(client, model_name, alias, str(mv.version), before, move)
    return str(mv.version)


def _alias_version(client, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def record_move(client, model_name: str, alias: str, version: str, replaced: str | None, details: dict) -> dict:
    """Record on the registered model that ``alias`` moved to ``version`` from ``replaced`` (module docstring)."""
    import json
    from datetime import datetime, timezone

    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alias": alias,
             "version": str(version), "replaced": replaced, **details}
    client.set_registered_model_tag(model_name, f"{MOVE_TAG}{int(version):06d}", json.dumps(entry, default=str))
    return entry


def moves(client, model_name: str) -> list[dict] | None:
    """The recorded moves of the registered model's aliases, oldest first; None when no model has that name."""
    import json

    try:
        model = client.get_registered_model(model_name)
    except Exception:
        return None
    found = []
    for key, value in (model.tags or {}).items():
        if key.startswith(MOVE_TAG):
            try:
                found.append(json.loads(value))
            except ValueError:  # not a record emotune wrote: left out
                continue
    return sorted(found, key=lambda m: (str(m.get("time", "")), int(m.get("version", 0) or 0)))


def force_production(bundle, tracking_uri: str, model_name: str = "emotune", experiment: str = "emotune",
                     tags: dict[str, Any] | None = None) -> str:
    """Register ``bundle`` and give it the alias without any gate (a first baseline, tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    return register(client, bundle, model_name, dict(tags or {}), {"forced": True}, exp_id,
                    move={"forced": True})


def register_pretrained(client, model_name: str, run_id: str, alias: str,
                        tags: dict | None = None) -> tuple[str, bool]:
    """Register the best checkpoint of a pretraining trial (its MLflow run ``run_id``, whose ``checkpoint/`` holds
    ``encoder.pt``) as a new version of ``model_name`` and give it ``alias``; returns the version and whether it is
    new.

    The version's source is the run's checkpoint folder itself (no copy): ``models:/<name>@<alias>`` downloads it and
    a fine-tuning sweep takes its ``encoder.pt`` (``cluster.inputs``). The move of the alias is recorded as for
    promotions (:func:`record_move`). When ``alias`` already names a version of this very run (a finished pretraining
    sweep resumed again), that version is returned and nothing is registered or moved (its tags stay as registered).
    When the alias has moved on to another version since, the run is registered again and the alias moves back to
    it: resuming a pretraining sweep means taking its encoder, as running it did."""
    current = _alias_version(client, model_name, alias)
    if current is not None and client.get_model_version(model_name, current).tags.get("emotune.run_id") == run_id:
        return current, False
    run = client.get_run(run_id)
    if "emotune.best_checkpoint" not in run.data.tags:
        raise ValueError(f"run {run_id} has no logged checkpoint to register")
    params = run.data.params
    version_tags = {**(tags or {}), "emotune.run_id": run_id,
                    **{f"emotune.{k}": params[k] for k in ("pretrain_method", "backbone") if k in params},
                    **{k: str(v) for k, v in run.data.metrics.items() if k.startswith("best_")}}
    tags = tags or {}
    return new_version(client, model_name, f"{run.info.artifact_uri}/checkpoint", run_id, version_tags, alias,
                       {"sweep": tags.get("emotune.sweep"), "trial": tags.get("emotune.trial"),
                        "run_id": run_id}), True
