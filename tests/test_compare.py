"""``emotune compare`` through the CLI's ``main`` on two tiny real sweeps in two MLflow experiments (shared with
``tests/test_report.py``); the experiments' ``mlflow.experimentKind`` tag; with ``-m slow``, MLflow's UI (a real
``mlflow server``) showing the sweep's runs in headless Chromium, and the README's coarse-vs-fine example through the
installed ``emotune`` command."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_report import _client, _parent, cli, dump_dom, tiny_sweeps
from test_sweep_e2e import emotune


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    return tiny_sweeps(tmp_path_factory.getbasetemp())


def test_compare_prints_both_sweeps_side_by_side_and_writes_the_plot(sweeps, tmp_path, capsys):
    status, out, _ = cli("compare", "rep", "rep-b", "--out", str(tmp_path / "cmp"), cwd=sweeps, capsys=capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rep", "rep-b"]
    label_width = lines[0].index("rep")
    row = {line[:label_width].strip(): line[label_width:].split() for line in lines[1:] if line.startswith("  ")}
    assert row["experiment"] == ["emotune", "other"]
    assert row["trials"] == ["3", "2"]
    client = _client(sweeps)
    for name, value in zip(("rep", "rep-b"), row["best objective"]):
        best = client.get_run(_parent(client, name).data.tags["emotune.best_run_id"])
        assert value == f"{best.data.metrics['best_val_ccc_mean']:.4f}"
    assert set(row) >= {"lr", "ssts_stride", "w_mse", "val_ccc_valence", "val_rmse_arousal"}
    assert all(re.fullmatch(r"\d\.\d{3}e-0\d", v) for v in row["lr"])
    assert "[Other settings that differ between the best configurations]" in out
    png = tmp_path / "cmp" / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<img src='compare.png'" in page and "<th>rep-b</th>" in page
    assert "![best objective so far against trials](compare.png)" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_by_run_id_and_user_errors(sweeps, capsys):
    client = _client(sweeps)
    run_id = _parent(client, "rep-b").info.run_id
    status, out, _ = cli("compare", "rep", run_id, cwd=sweeps, capsys=capsys)
    assert status == 0 and out.splitlines()[0].split() == ["rep", "rep-b"]
    status, _, err = cli("compare", "rep", "nope", cwd=sweeps, capsys=capsys)
    assert status == 2 and err == "emotune: error: no sweep 'nope'; sweeps: rep, rep-b\n"
    status, _, err = cli("compare", "rep", "rep", cwd=sweeps, capsys=capsys)
    assert status == 2 and "the same sweep is named twice" in err
    status, _, err = cli("compare", "rep", cwd=sweeps, capsys=capsys)
    assert status == 2 and err == "emotune: error: compare needs two or more sweeps, got 1\n"


def test_every_experiment_a_sweep_uses_opens_on_its_runs_in_mlflow_ui(sweeps):
    """``mlflow.experimentKind`` is set when emotune creates an experiment and when it uses one created without it."""
    from cluster.tracking import open_experiment

    client = _client(sweeps)
    for name in ("emotune", "other"):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    _, experiment_id = open_experiment(f"sqlite:///{sweeps / 'mlflow.db'}", "made-elsewhere")
    assert experiment_id == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_shows_the_sweeps_runs_in_a_browser(sweeps, tmp_path):
    """A real ``mlflow server`` on the sweeps' store; Chromium renders the experiment's runs page (a JS app) and the
    sweep's parent run name appears in it, not the empty GenAI traces overview."""
    from test_report import chromium

    chromium()
    client = _client(sweeps)
    experiment_id = client.get_experiment_by_name("emotune").experiment_id
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               f"sqlite:///{sweeps / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=sweeps, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                answer = json.loads(urllib.request.urlopen(
                    f"{url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", timeout=5).read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "mlflow server did not answer"
        dom = dump_dom(f"{url}/#/experiments/{experiment_id}/runs", tmp_path, budget_ms=20000)
        trial_ids = [r.data.tags["emotune.trial_id"] for r in client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{_parent(client, 'rep').info.run_id}'")]
        assert ">rep<" in dom or any(t in dom for t in trial_ids), dom[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_readme_coarse_against_fine_example(tmp_path):
    """The README's "Reports and comparisons" commands as written, with ``L``, ``I`` and ``F`` as its studies section
    defines them (3 subjects of 400-frame videos prepared at 32 px, coarse and fine)."""
    from test_readme import code_blocks, commands

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    laptop = readme[readme.index('L="') + 3:].split('"', 1)[0]
    emotune("data", "synth", "--out", "data", "--subjects", "3", "--videos-per-subject", "1", "--frames", "400",
            "--size", "64", cwd=tmp_path)
    index = {}
    for var, extra in (("$I", ()), ("$F", ("--align", "fine"))):
        prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", f"cache{var[1]}", "--size",
                       "32", *extra, cwd=tmp_path)
        index[var] = str((tmp_path / prep.stdout.split("dataset index: ")[1].strip()).resolve())
    [block] = code_blocks("Reports and comparisons")
    steps = commands(block.replace("$L", laptop))
    assert [s[:2] for s in steps] == [["emotune", "sweep"], ["emotune", "sweep"], ["emotune", "compare"],
                                      ["emotune", "report"]]
    outputs = []
    for words in steps:
        args = [w.replace("$I", index["$I"]).replace("$F", index["$F"]) for w in words[1:]]
        outputs.append(emotune(*args, cwd=tmp_path, timeout=900).stdout)
    compared = outputs[2].splitlines()
    assert compared[0].split() == ["ssts-coarse", "ssts-fine"]
    width = compared[0].index("ssts-coarse")
    row = {line[:width].strip(): line[width:].split() for line in compared[1:] if line.startswith("  ")}
    assert row["registration"] == ["coarse", "fine"] and row["trials"] == ["2", "2"]
    assert (tmp_path / "compare" / "compare.png").is_file()
    page = (tmp_path / "ray_results" / "ssts-coarse-report" / "report.html").read_text()
    assert "SSTS stride x registration (paper 000, Table II)" in page
