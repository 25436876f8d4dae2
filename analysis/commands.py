"""The reading commands ``emotune report``, ``compare`` and ``predict``: each takes the parsed arguments of
:mod:`cluster.cli`'s parser, reads the MLflow store they name (``--mlflow-uri``, else $MLFLOW_TRACKING_URI, else
./mlflow.db; :func:`trainables.storage.existing_store`) and returns the exit status."""
from __future__ import annotations

from trainables.console import say
from trainables.storage import default_optuna_storage, existing_store, tracking_uri


def mlflow_client(uri: str | None):
    """An ``MlflowClient`` on the existing store ``uri`` names (:func:`~trainables.storage.existing_store`)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(existing_store(uri))


def cmd_report(a) -> int:
    from analysis.fronts import sweep_fronts
    from analysis.report import write_report
    from trainables.provenance import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    client = mlflow_client(a.mlflow_uri)
    report, sweep = write_report(client, a.sweep, a.out, a.optuna_storage or default_optuna_storage(),
                                 experiment=a.experiment)
    # The report is logged into the sweep's experiment: one created before emotune tagged experiments gets the tag
    # now, so MLflow's UI opens it on its runs.
    client.set_experiment_tag(client.get_run(sweep.parent_run_id).info.experiment_id, EXPERIMENT_KIND_TAG,
                              EXPERIMENT_KIND)
    say(f"report: {report}")
    say(f"logged to MLflow parent run {sweep.parent_run_id} under report/")
    for front in sweep_fronts(sweep):
        members = ", ".join(front.member_ids()) or "none"
        say(f"Pareto front {front.title}: {members}; hypervolume {front.hypervolume_text()}")
    return 0


def cmd_compare(a) -> int:
    from analysis.compare import compare

    say(compare(mlflow_client(a.mlflow_uri), a.sweeps, a.out, experiment=a.experiment))
    return 0


def cmd_predict(a) -> int:
    from analysis.models import resolve_model
    from trainables.predict import predict_files

    remote = a.model.startswith(("runs:/", "models:/"))
    bundle = resolve_model(a.model, existing_store(a.mlflow_uri) if remote else tracking_uri(a.mlflow_uri))
    for csv, png, table in predict_files(bundle, a.videos, a.out, detector=a.detector, faces=a.faces):
        say(f"{csv}  {png}  ({len(table)} label steps, face on {100 * table['face'].mean():.1f}%)")
    return 0
