"""What makes a sweep reproducible, recorded on its MLflow parent run: the command line, the git commit, package
versions and the hash of the data the trials read."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("emotune", "torch", "torchvision", "ray", "optuna", "mlflow", "timm", "decord", "face-alignment",
            "opencv-python", "numpy", "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def git_commit(where: str | Path = ".") -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_fingerprint(index_path: str | Path) -> dict[str, str]:
    """Hashes of the dataset index (which cache entries, which splits) and of the manifest it was built from."""
    index_path = Path(index_path)
    index = json.loads(index_path.read_text())
    out = {"data_index_sha1": hashlib.sha1(index_path.read_bytes()).hexdigest()}
    manifest = Path(index.get("manifest", ""))
    out["manifest_sha1"] = hashlib.sha1(manifest.read_bytes()).hexdigest() if manifest.is_file() else "missing"
    return out
