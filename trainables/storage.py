"""Where a sweep's files live: the local disk, or a bucket behind a ``pyarrow.fs.FileSystem`` (what Ray records a
checkpoint's path against); and where its stores are by default (MLflow's and Optuna's SQLite files), which the sweep
writes and every reading command (report, compare, promote, predict) looks in. No torch here: the sweep's driver names
checkpoints with it too."""
from __future__ import annotations

import os
from pathlib import Path

from trainables.errors import UserError


def default_tracking_uri(workdir: str | Path = ".") -> str:
    """A SQLite store under ``workdir`` (MLflow 3 refuses the plain file store)."""
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def default_optuna_storage(workdir: str | Path = ".") -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'optuna.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (MLflow's or SQLAlchemy's), or None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def tracking_uri(uri: str | None) -> str:
    """The tracking URI a command uses: ``--mlflow-uri``, then $MLFLOW_TRACKING_URI, then ./mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def existing_store(uri: str | None) -> str:
    """The tracking URI a reading command uses (:func:`tracking_uri`), refused when it names a SQLite file that does
    not exist: MLflow would create an empty store there and then find nothing in it.

    Raises:
        UserError: no store at that SQLite path.
    """
    uri = tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {uri}; give --mlflow-uri (the sweep's --mlflow-uri)")
    return uri


def is_local(filesystem) -> bool:
    """Whether ``filesystem`` (a ``pyarrow.fs.FileSystem``, or None) is the local disk."""
    return filesystem is None or getattr(filesystem, "type_name", "local") == "local"


def storage_uri(path, filesystem) -> str:
    """A location as a user finds it: the local path, or ``s3://bucket/...`` for a path on a bucket's filesystem (a
    path that already is a URI is returned as it is)."""
    if is_local(filesystem) or "://" in str(path):
        return str(path)
    return f"{filesystem.type_name}://{path}"
