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
