"""What makes a sweep reproducible, recorded on its MLflow parent run: the command line, the git commit, package
versions and the hash of the data the trials read."""
from __future__ import annotations

import hashlib
import json
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


def data_fingerprint(index_path: str | Path) -> dict[str, str]:
    """Hashes of the dataset index (which cache entries, which splits) and of the manifest it was built from."""
    index_path = Path(index_path)
    index = json.loads(index_path.read_text())
    out = {"data_index_sha1": hashlib.sha1(index_path.read_bytes()).hexdigest()}
    manifest = Path(index.get("manifest", ""))
    out["manifest_sha1"] = hashlib.sha1(manifest.read_bytes()).hexdigest() if manifest.is_file() else "missing"
    return out
