"""The MLflow model registry: a model bundle logged as a pyfunc model (:mod:`analysis.pyfunc_model`) in a run of its
own, registered under a name and given the alias ``production``.

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


def production_version(client, name: str):
    """The model version holding the ``production`` alias, or None."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except Exception:
        return None


def register(client, bundle, model_name: str, tags: dict, production: dict, experiment_id: str,
             alias: str = ALIAS) -> str:
    """Log ``bundle`` as a pyfunc model in a new run (kind ``promotion``), register it as ``model_name`` and give it
    ``alias``; returns the version. ``client`` must be an ``MlflowClient`` whose registry is its tracking store."""
    import warnings

    import mlflow.pyfunc
    import yaml
    from mlflow.exceptions import MlflowException

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
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(model_name, alias, mv.version)
    return str(mv.version)


def force_production(bundle, tracking_uri: str, model_name: str = "emotune", experiment: str = "emotune",
                     tags: dict[str, Any] | None = None) -> str:
    """Register ``bundle`` and give it the alias without any gate (a first baseline, tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    return register(client, bundle, model_name, dict(tags or {}), {"forced": True}, exp_id)
