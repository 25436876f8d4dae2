"""Opening the sweep's stores (MLflow's and Optuna's) safely when several commands open them at once.

A new SQLite store is created by its first connection: MLflow runs its alembic migrations, Optuna creates its tables.
Two sweeps started at the same moment on one new store both ran them: one or both died ("Online migration expected to
match one row ... 0 found", "duplicate column name") and the store was sometimes left unreadable. So the first
connection of each process to a local SQLite store (and the get-or-create of an experiment, which the other sweep may
be doing too) runs under an exclusive lock on a file beside the database, ``<db>.lock``; later connections find the
schema complete and need no lock. Stores behind a server (``http://``, PostgreSQL, ...) serialise this themselves.
"""
from __future__ import annotations

import contextlib

from trainables.storage import sqlite_path


@contextlib.contextmanager
def first_connection(uri: str):
    """Hold an exclusive lock on ``<db>.lock`` while the block opens the SQLite store ``uri`` (nothing for other
    stores). The lock is ``flock``'s: released when the block ends or the process dies, so a killed command never
    leaves it held."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
