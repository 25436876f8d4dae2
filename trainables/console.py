"""emotune's own lines on the user's console; what other tools print goes to a log file.

Ray (its token and start-up notices, Tune's tables and boxes), MLflow (database creation, model registration), Optuna
(study creation) and the processes Ray starts all write to the process's stdout and stderr, at the Python level and
below it. The ``emotune`` command (``cluster.cli.run``) therefore points file descriptors 1 and 2, and with them
``sys.stdout``, ``sys.stderr``, every logging handler and every child process, at a log file, and keeps duplicates of
the console's descriptors for emotune's own lines: :func:`say` (stdout), :func:`warn` (stderr) and the progress bars
(:func:`bar_stream`). Until a command knows its folder the log is an unnamed temporary file; :func:`log_to` gives it
its place (the sweep's folder, the demo's root, ...) with what it holds so far, and says where it is, once.

Without :func:`divert` (library use, tests calling ``cluster.cli.main``, ``-v``) everything goes to ``sys.stdout``
and ``sys.stderr`` as usual.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO

_out: IO[str] | None = None  # the console's stdout while diverted
_err: IO[str] | None = None
_log: IO[bytes] | None = None  # the file behind descriptors 1 and 2 while diverted
_log_path: Path | None = None


def out() -> IO[str]:
    return _out or sys.stdout


def err() -> IO[str]:
    return _err or sys.stderr


def say(*parts, sep: str = " ", end: str = "\n") -> None:
    """One of emotune's own lines on the console's stdout."""
    print(*parts, sep=sep, end=end, file=out(), flush=True)


def warn(*parts, sep: str = " ") -> None:
    """One of emotune's own lines on the console's stderr (errors, warnings)."""
    print(*parts, sep=sep, file=err(), flush=True)


def bar_stream() -> IO[str]:
    """Where progress bars draw: the console's stderr (tqdm's default stream, kept on the console)."""
    return err()


def bars() -> bool:
    """Progress bars are drawn on a terminal only: in a pipe or a job's log they would be a heap of carriage
    returns."""
    try:
        return err().isatty()
    except (AttributeError, ValueError):
        return False


def diverted() -> bool:
    return _log is not None


def log_path() -> Path | None:
    return _log_path


def divert() -> None:
    """Send descriptors 1 and 2 (everything but emotune's own lines) to a temporary log until :func:`log_to`."""
    global _out, _err, _log
    if _log is not None:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _out = open(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding, errors="replace")
    _err = open(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")
    _log = tempfile.TemporaryFile()
    _point_at(_log)


def log_to(path: str | Path) -> None:
    """Give the log its place (once; later calls keep the first): what it holds so far is copied there, then it
    grows there. Says where it is."""
    global _log, _log_path
    if _log is None or _log_path is not None:
        return
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    named = open(path, "ab")
    _log.seek(0)
    shutil.copyfileobj(_log, named)
    named.flush()
    _point_at(named)
    _log.close()
    _log, _log_path = named, path
    say(f"log of other tools' output: {path}")


def has_output() -> bool:
    """Whether anything was written to the log (False when not diverted)."""
    if _log is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fstat(_log.fileno()).st_size > 0


def _point_at(file: IO[bytes]) -> None:
    os.dup2(file.fileno(), 1)
    os.dup2(file.fileno(), 2)
