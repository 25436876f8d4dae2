"""Where a sweep's files live: the local disk, or a bucket behind a ``pyarrow.fs.FileSystem`` (what Ray records a
checkpoint's path against). No torch here: the sweep's driver names checkpoints with it too."""
from __future__ import annotations


def is_local(filesystem) -> bool:
    """Whether ``filesystem`` (a ``pyarrow.fs.FileSystem``, or None) is the local disk."""
    return filesystem is None or getattr(filesystem, "type_name", "local") == "local"


def storage_uri(path, filesystem) -> str:
    """A location as a user finds it: the local path, or ``s3://bucket/...`` for a path on a bucket's filesystem (a
    path that already is a URI is returned as it is)."""
    if is_local(filesystem) or "://" in str(path):
        return str(path)
    return f"{filesystem.type_name}://{path}"
