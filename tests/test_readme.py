"""The README's examples, run as written (in a scratch folder): the demo command and the MLflow UI command on its store
(default suite), the own-data workflow (``-m slow``: face_alignment on every frame). The laptop line of every study is
run by ``tests/test_studies.py``; the test command is what CI runs; ``ray job submit`` and ``--resume`` are exercised by
``tests/test_cluster.py`` and ``tests/test_fault_tolerance.py`` (``-m slow``)."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_sweep_e2e import emotune

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def code_blocks(section: str) -> list[str]:
    """The bash blocks of the README section whose heading is ``section``."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def commands(block: str) -> list[list[str]]:
    """Shell commands of a block (continuation lines joined, comments dropped), split into words."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The demo's promoted model on the held-out subject's video, mean CCC of valence and arousal against its synthetic
#: labels (measured: 0.907 with the demo's defaults; the best trial validates at about 0.72).
DEMO_HELDOUT_CCC = 0.5


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's setup command's last step, `emotune demo`, run once in a scratch folder: (folder, its output)."""
    setup = commands(code_blocks("The two commands")[0])[0]
    # The install steps are what CI runs before this suite; the demo is the command's last step.
    assert " ".join(setup).split("&&")[-1].split() == [".venv/bin/emotune", "demo"]
    work = tmp_path_factory.mktemp("demo")
    started = time.time()
    proc = emotune("demo", cwd=work, timeout=900)
    DEMO_STDERR[work] = proc.stderr
    return work, proc.stdout, time.time() - started


DEMO_STDERR: dict[Path, str] = {}

#: Every line the demo may print: emotune's own formats. Another tool's line (Ray, Tune, MLflow, Optuna, alembic) is
#: not one of them and fails the test; those go to the log file named on the first line.
DEMO_LINES = [r"log of other tools' output: \S+/emotune-demo/emotune\.log",
              r"\[1/6\] synthetic face videos -> \S+", r"\[2/6\] prepare \(decode once, crop faces\) -> \S+",
              r"      videos ok: \d+, skipped: \d+", r"      frames with a face: [\d.]+%, mean detection score: [\d.]+",
              r"      face share per video: min .*, median .*, max .*",
              r"\[3/6\] sweep on search_spaces/smoke\.yaml",
              r"pre-flight: \d+ configurations and \d+ data views checked: ok",
              r"  \[ *\d+ s\] trial \w{8} (started|epoch \d+/\d+: val_ccc_mean -?[\d.]+|finished after \d+ epoch\(s\)"
              r"( \(stopped early\))?; \d+ done)",
              r"", r"Leaderboard of sweep demo-\d{8}-\d{6} \(8 trials, objective val_ccc_mean\):",
              r"rank +trial +lr .* val_ccc_mean", r"-+", r"\d+ +\w{8} +.*(complete|stopped early) +.*",
              r"MLflow store:  sqlite:///\S+/mlflow\.db  \(parent run \w{32}\)",
              r"  open it with: mlflow ui --backend-store-uri sqlite:///\S+ --port 5000",
              r"Ray results:   \S+/ray_results/demo-\d{8}-\d{6}",
              r"Best trial:    \w{8} \(checkpoint logged to MLflow run \w{32}\)",
              r"Trials:        \d+ complete, \d+ stopped early, \d+ diverged, \d+ errored",
              r"\[4/6\] report of sweep demo-\d{8}-\d{6}", r"      report: \S+/report\.html",
              r"\[5/6\] promote the best trial \(scored on the test subjects, which no trial has seen\)",
              r"      (promoted|not promoted): .*", r"      registered model: models:/emotune@production \(version \d+\) in \S+",
              r"      production\.yaml: \S+", r"\[6/6\] predict a video of a subject outside the dataset",
              r"      prediction: \S+\.csv", r"      plot:       \S+\.png",
              r"      CCC against its synthetic labels: valence -?[\d.]+, arousal -?[\d.]+, mean -?[\d.]+",
              r"Demo finished in \d+ s"]


def foreign_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not any(re.fullmatch(p, line) for p in DEMO_LINES)]


def test_the_demo_console_carries_only_emotunes_lines(demo):
    work, out, _ = demo
    assert foreign_lines(out) == []
    assert DEMO_STDERR[work] == ""  # no terminal here, so no progress bars either
    log = work / "emotune-demo" / "emotune.log"
    assert out.splitlines()[0] == f"log of other tools' output: {log}"
    # the other tools' lines are in the log, not lost
    text = log.read_text()
    assert "Started a local Ray instance" in text and "A new study created in RDB" in text
    # Tune snapshots its experiment often enough that it never forces (and warns about) extra snapshots
    assert "snapshotting has been triggered multiple times" not in text
    # and superseded checkpoints are gone: each trial keeps its 2 best and its latest at most
    trials = list((work / "emotune-demo" / "ray_results").glob("demo-*/trial-*"))
    assert len(trials) == 8 and all(len(list(t.glob("checkpoint_*"))) <= 3 for t in trials)
    reports = sum(len((t / "result.json").read_text().splitlines()) for t in trials)  # one checkpoint each
    assert sum(len(list(t.glob("checkpoint_*"))) for t in trials) < reports


def test_the_demo_goes_from_videos_to_a_promoted_model_and_a_prediction(demo):
    work, out, seconds = demo
    root = work / "emotune-demo"
    board = out.split("Leaderboard of sweep demo-")[1]
    assert len([line for line in board.splitlines()[1:] if line[:1].isdigit()]) == 8
    assert re.search(r"Trials: +\d+ complete, \d+ stopped early, 0 diverged, 0 errored", out)
    assert "Best trial:    " in out and "Demo finished in" in out
    print(f"demo: {seconds:.0f} s")
    # the report: leaderboard, importances and the study's table, with its figures
    report = (root / "report" / "report.html").read_text()
    assert f"report: {root / 'report' / 'report.html'}" in out
    for heading in ("<h3>Leaderboard</h3>", "<h3>Hyperparameter importance for val_ccc_mean (fANOVA)</h3>",
                    "<h2>Study tables</h2>", "<h3>ssts_stride</h3>", "<h3>window_overlap</h3>"):
        assert heading in report, heading  # smoke's study table: one per searched parameter
    assert {p.name for p in (root / "report" / "figures").glob("*.png")} >= {"importance.png", "learning_curves.png",
                                                                            "parallel.png", "time.png"}
    # promotion: the first model of this store takes the alias, production.yaml says which trial
    best = re.search(r"Best trial: +(\w+)", out).group(1)
    assert re.search(rf"promoted: trial {best} of sweep demo-\S+ scores test ccc_mean -?\d\.\d{{4}}", out)
    assert f"registered model: models:/emotune@production (version 1)" in out
    assert yaml.safe_load((root / "production.yaml").read_text())["trial"] == best
    # the prediction on a subject outside the dataset, against that video's own labels
    table = pd.read_csv(root / "predictions" / "s08_v0.csv")
    labels = pd.read_csv(root / "heldout" / "labels" / "s08_v0.csv")
    assert list(table.columns) == ["time", "valence", "arousal", "face"] and len(table) == len(labels)
    assert (root / "predictions" / "s08_v0.png").stat().st_size > 10_000
    from trainables.objectives.metrics import regression_report

    ccc = regression_report(labels[["valence", "arousal"]].to_numpy(), table[["valence", "arousal"]].to_numpy())
    printed = float(re.search(r"CCC against its synthetic labels: .* mean (-?\d\.\d{3})", out).group(1))
    print(f"held-out video: CCC valence {ccc['ccc_valence']:.3f}, arousal {ccc['ccc_arousal']:.3f}, mean "
          f"{ccc['ccc_mean']:.3f} (threshold {DEMO_HELDOUT_CCC})")
    assert printed == pytest.approx(ccc["ccc_mean"], abs=1e-3)
    assert ccc["ccc_mean"] >= DEMO_HELDOUT_CCC


@pytest.mark.slow
def test_the_demo_report_figures_load_in_a_browser(demo, tmp_path):
    from test_report import figure_widths

    widths = figure_widths(demo[0] / "emotune-demo" / "report" / "report.html", tmp_path)
    names = {f"figures/{n}.png" for n in ("importance", "parallel", "learning_curves", "time", "pareto")}
    assert set(widths) == names and all(w > 0 for w in widths.values()), widths


def test_the_mlflow_ui_command_on_the_demo_store(demo):
    tmp_path = demo[0]
    ui = commands(code_blocks("Looking at the results in MLflow")[0])[0]
    assert ui[:2] == [".venv/bin/mlflow", "ui"]
    port = _free_port()
    args = [a.replace("$PWD", str(tmp_path)) for a in ui[1:]]
    args[args.index("--port") + 1] = str(port)
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), *args], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=emotune-demo"
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "mlflow ui did not answer"
        experiment_id = answer["experiment"]["experiment_id"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                                         data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert len(runs) == 10  # the sweep's parent run, its 8 trials and the promotion's run
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_own_data_workflow(tmp_path, fa_weights):
    """Aff-Wild2's layout (videos, one VA txt per video with a `valence,arousal` header) made from synthetic videos,
    then the README's three commands as written, face_alignment's weights found through $EMOTUNE_FACE_WEIGHTS (S3FD and
    FAN run on every frame on the CPU: a few seconds a frame, hence short clips). The sweep runs its pre-flight check
    only (``--dry-run``), sized for this machine and shrunk to the short clips (16-frame windows at 25 fps, values the
    study searches)."""
    folder, _ = fa_weights
    emotune("data", "synth", "--out", "synth", "--subjects", "3", "--videos-per-subject", "1", "--frames", "40",
            "--size", "96", cwd=tmp_path)
    root = tmp_path / "affwild2"
    (root / "videos").mkdir(parents=True)
    (root / "annotations" / "VA").mkdir(parents=True)
    for row in csv.DictReader((tmp_path / "synth" / "manifest.csv").open()):
        (tmp_path / "synth" / row["path"]).rename(root / "videos" / f"{row['video_id']}.mp4")
        labels = list(csv.DictReader((tmp_path / "synth" / row["labels"]).open()))
        lines = ["valence,arousal", *(f"{r['valence']},{r['arousal']}" for r in labels)]
        (root / "annotations" / "VA" / f"{row['video_id']}.txt").write_text("\n".join(lines) + "\n")

    env = {**os.environ, "EMOTUNE_FACE_WEIGHTS": str(folder)}
    steps = commands(code_blocks("Using it on your own data")[0])
    assert [s[:3] for s in steps] == [["emotune", "data", "manifest"], ["emotune", "data", "prepare"],
                                      ["emotune", "sweep", "--space"]]
    exe = str(Path(sys.executable).with_name("emotune"))
    outputs = []
    for words in steps:
        if words[1] == "sweep":
            index = outputs[-1].split("dataset index: ")[1].strip()
            words = [index if w == "cache/index-<digest>.json" else w for w in words]
            words += ["--dry-run", "--cpus-per-worker", "1", "--gpus-per-worker", "0", "--set", "window_length=16",
                      "--set", "fps=25"]
        # A session of its own, killed whole at the end: `--workers 4` starts processes that outlive a killed parent.
        proc = subprocess.Popen([exe, *words[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=3000)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert proc.returncode == 0, f"{' '.join(words)}:\n{out[-3000:]}\n{err[-3000:]}"
        outputs.append(out)
    assert "videos ok: 3, skipped: 0" in outputs[1]
    assert "pre-flight:" in outputs[2] and "dry run: 64 trials" in outputs[2]


from test_faces import fa_weights  # noqa: E402,F401  (the fixture: tiny face_alignment weights written locally)


def test_the_benchmark_commands_of_the_readme_exist_with_their_options():
    """Each benchmark the README names answers ``--help`` (exit 0) and takes the options the README gives it."""
    found = [re.sub(r"\s+", " ", m).split() for m in re.findall(r"`\.venv/bin/python\s+(benchmarks/[^`]*)`", README)]
    assert len(found) >= 8, found
    root = Path(__file__).resolve().parents[1]
    # side by side: several benchmarks import torch before parsing their arguments
    procs = [(script, args, subprocess.Popen([sys.executable, script, "--help"], cwd=root, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)) for script, *args in found]
    for script, args, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (script, err[-2000:])
        for option in (a for a in args if a.startswith("--")):
            assert option in out, (script, option)
