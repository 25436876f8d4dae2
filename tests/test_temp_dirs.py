"""Commands leave nothing in the temporary folder: `emotune promote` and `emotune predict` (their MLflow downloads,
the registration's staging folder, the prediction's crop file) and the report's reads of a sweep, run in this process
with ``TMPDIR`` pointed at a fresh empty folder, leave it empty; so does a process that loads the promoted pyfunc
with ``mlflow.pyfunc.load_model`` and predicts. The sweep and its MLflow server are those of ``tests/test_promote.py``
(``swept``, ``baseline``)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from cluster.cli import main
from test_promote import _client, baseline, swept  # noqa: F401 (fixtures)


@pytest.fixture
def empty_tmp(tmp_path, monkeypatch):
    """A fresh empty folder as the process's temporary folder (``tempfile.tempdir`` reset, so Python reads ``TMPDIR``
    again on the next call). Torch's compile cache is kept elsewhere: importing ``torch._dynamo`` (timm imports it
    through torchvision) creates ``<tmp>/torchinductor_<user>``, a per-user cache every process shares and keeps by
    design, not a command's leftover."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(folder)
    return folder


def _left(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_promote_and_predict_leave_the_temporary_folder_empty(swept, baseline, empty_tmp, tmp_path, capsys):
    from analysis.promote import find_sweep
    from analysis.sweeps import load_sweep

    work, uri, _ = swept
    assert _left(empty_tmp) == []
    # promotion: the candidate (runs:/) and the production model (models:/) downloaded and scored, a model registered
    assert main(["promote", "sw", "--mlflow-uri", uri, "--out", str(tmp_path / "promoted")]) in (0, 1)
    assert _left(empty_tmp) == [], "promote"

    manifest = pd.read_csv(work / "data" / "manifest.csv")
    test = manifest[manifest.split == "test"].iloc[0]
    best = find_sweep(_client(uri), "sw").data.tags["emotune.best_run_id"]
    for model in ("models:/emotune@production", f"runs:/{best}"):
        assert main(["predict", str(work / "data" / test.path), "--model", model, "--mlflow-uri", uri,
                     "--detector", "precomputed", "--faces", str(work / "data" / test.faces),
                     "--out", str(tmp_path / "predictions")]) == 0
        assert _left(empty_tmp) == [], model
    capsys.readouterr()

    # the report's reads of the sweep: the study file and a trial's config (of the sweep, not of the promotion run,
    # which carries the sweep's name as lineage)
    sweep = load_sweep(_client(uri), "sw")
    assert sweep.parent_run_id == find_sweep(_client(uri), "sw").info.run_id
    assert sweep.log_scaled == {"lr"} and sweep.results_dir
    assert _left(empty_tmp) == [], "load_sweep"


def test_the_pyfunc_leaves_nothing_once_its_process_ends(swept, baseline, empty_tmp):
    """``mlflow.pyfunc.load_model("models:/...")`` copies the model into a fresh temporary folder MLflow never removes;
    the emotune model removes it when the process ends (a fresh process loads and predicts, then exits). A folder the
    caller gave as ``dst_path``, and a local model loaded in place, are the caller's: kept, even in the temporary
    folder."""
    work, uri, _ = swept
    manifest = pd.read_csv(work / "data" / "manifest.csv")
    video = str(work / "data" / manifest[manifest.split == "test"].iloc[0].path)
    script = (f"import os, tempfile, mlflow.pyfunc, pandas as pd\n"
              f"model = mlflow.pyfunc.load_model('models:/emotune/{baseline}')\n"
              f"rows = model.predict(pd.DataFrame({{'video': [{video!r}]}}))\n"
              f"during = sorted(os.listdir(tempfile.gettempdir()))\n"
              f"own = tempfile.mkdtemp()\n"
              f"mlflow.pyfunc.load_model('models:/emotune/{baseline}', dst_path=own)\n"
              f"mlflow.pyfunc.load_model(own)\n"
              f"print(len(rows), len(during), os.path.basename(own))\n")
    # TMPDIR and TORCHINDUCTOR_CACHE_DIR come from empty_tmp
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, during, own = proc.stdout.split()[-3:]
    assert int(rows) > 0 and during == "1", proc.stdout  # MLflow's download, while the model was loaded
    assert [p.name for p in empty_tmp.iterdir()] == [own]
    assert (empty_tmp / own / "MLmodel").is_file() and (empty_tmp / own / "artifacts" / "bundle.pt").is_file()
