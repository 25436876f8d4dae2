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


# MLflow 3's UI opens an experiment without this tag on its GenAI traces overview, which is empty for a sweep; with it,
# the experiment opens on its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: The tag that says what an emotune MLflow run is. A sweep's parent run is ``sweep`` (the only kind ``emotune report``,
#: ``compare`` and ``promote`` take for a sweep name), a retraining's parent run ``retrain``, the parent run of a
#: cross-validated sweep's refit ``refit``, a promotion's run ``promotion``. The other runs carry lineage tags such
#: as ``emotune.sweep`` too, so a name alone cannot tell them apart. Written by ``cluster`` and ``analysis``, read by
#: ``analysis``: it is defined here, below both.
KIND_TAG = "emotune.kind"
SWEEP_KIND = "sweep"
RETRAIN_KIND = "retrain"
REFIT_KIND = "refit"
PROMOTION_KIND = "promotion"
