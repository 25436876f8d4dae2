"""Where the models prediction and promotion read come from: a trial's best checkpoint (``runs:/<run_id>``), a
registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``) or a local file.

Every read names its store explicitly (an ``MlflowClient`` on the given tracking URI, ``tracking_uri`` and
``registry_uri`` passed to MLflow's download): the process's MLflow settings and ``MLFLOW_*`` variables are never
touched, so a later subprocess talks to the store it was meant to.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from trainables.errors import UserError


def resolve_model(source: str, tracking_uri: str | None = None):
    """A :class:`trainables.predict.ModelBundle` from ``runs:/<run_id>`` (a trial's best checkpoint),
    ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (a promoted model) or a local ``state.pt`` /
    bundle file.

    A download goes into a temporary folder removed before this returns: :func:`~trainables.predict.load_bundle`
    reads the whole file into memory (``torch.load`` without ``mmap``), so the bundle needs no file afterwards.

    Raises:
        UserError: the run, model or file does not exist or holds no emotune checkpoint.
    """
    from trainables.predict import load_bundle

    if source.startswith("runs:/"):
        from mlflow.tracking import MlflowClient

        run_id = source[len("runs:/"):].strip("/").split("/")[0]
        with tempfile.TemporaryDirectory(prefix="emotune-model-") as tmp:
            try:
                path = MlflowClient(tracking_uri).download_artifacts(run_id, "checkpoint/state.pt", tmp)
            except Exception as exc:
                raise UserError(f"model {source}: no checkpoint/state.pt in that MLflow run "
                                f"({' '.join(str(exc).split())[:200]})") from None
            return load_bundle(path)
    if source.startswith("models:/"):
        with tempfile.TemporaryDirectory(prefix="emotune-model-") as tmp:
            return load_bundle(download_registered(source, tracking_uri, tmp))
    return load_bundle(source)


def download_registered(uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The bundle file of a registered model (``models:/name@alias`` or ``models:/name/version``), downloaded into the
    existing folder ``dst`` (the caller's to remove). The registry is the tracking store (emotune registers where it
    tracks).

    Judgment call: the model version is looked up here with a client on ``tracking_uri`` and its artifact location
    downloaded, instead of handing ``models:/`` to MLflow's download, which finds the version through the process's
    registry URI (the ``registry_uri`` argument does not reach that lookup in MLflow 3.17).
    """
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        folder = mlflow.artifacts.download_artifacts(artifact_uri=version_location(client, uri),
                                                     tracking_uri=tracking_uri, dst_path=str(dst))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"model {uri} cannot be found in the MLflow registry ({' '.join(str(exc).split())[:200]})") \
            from None
    found = sorted(Path(folder).rglob("bundle.pt"))
    if not found:
        raise UserError(f"model {uri} is not an emotune model (no bundle.pt in its artifacts)")
    return found[0]


def version_location(client, uri: str) -> str:
    """Where the artifacts of the model version ``uri`` (``models:/name@alias`` or ``models:/name/version``) are."""
    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise UserError(f"model {uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    location = client.get_model_version_download_uri(version.name, version.version)
    if location.startswith("models:/"):  # a version registered from an MLflow 3 logged model (models:/<model_id>)
        location = client.get_logged_model(location[len("models:/"):].split("/")[0]).artifact_location
    return location
