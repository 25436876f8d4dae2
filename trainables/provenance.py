"""Where a result came from: the code's commit, recorded on every sweep and every promoted model."""
from __future__ import annotations

import subprocess
from pathlib import Path

#: The project's own checkout (the installed package is an editable install of it, or not a checkout at all).
PROJECT = Path(__file__).resolve().parents[1]


def git_commit(where: str | Path = PROJECT) -> str:
    """The checkout's commit (with ``-dirty`` when tracked files have uncommitted changes), or ``unknown`` outside
    git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
