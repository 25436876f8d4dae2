"""User errors: what a user can fix (a setting, a file, a resource request), as opposed to a bug or a crash.

Every error the user can fix derives from :class:`UserError`. The CLI prints such an error as one line
(``emotune: error: <message>``) and exits 2, never with a traceback; a trial that raises one is not retried, since
running the same configuration again cannot help. The message names the key, value, file or video and what is allowed.

``search_spaces.schema.SpaceError`` is the one user error outside this family: ``search_spaces`` imports no other
room, so the CLI catches the two roots together.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user gave is wrong; the message says what and what is allowed. Not retried inside a sweep."""


class ConfigError(UserError):
    """A trial setting that is unknown, mistyped, outside its range, or does not apply to the chosen backbone."""


class DataError(UserError):
    """A dataset input that cannot be used: a manifest, label file, video, cache entry or dataset index."""


class ResourceError(UserError):
    """A resource request the cluster cannot satisfy."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The :class:`UserError` behind ``err``, else None: ``err`` itself, an explicit cause (``raise ... from``), the
    exception a ``RayTaskError`` carries (``cause``), or one a Ray Train worker raised (``TorchTrainer.fit`` raises a
    ``WorkerGroupError`` whose ``worker_failures`` wrap each worker's exception). The one walk through a failure's
    causes: the trial uses it to end without a retry, the driver's retry policy to decide."""
    todo, seen = [err], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # a RayTaskError carries the exception raised in the task
        if isinstance(exc, UserError):
            return cause if isinstance(cause, UserError) else exc
        failures = getattr(exc, "worker_failures", None)
        todo += [cause, exc.__cause__, getattr(exc, "_base_exc", None), getattr(exc, "controller_failure", None),
                 *(failures.values() if isinstance(failures, dict) else ())]
    return None
