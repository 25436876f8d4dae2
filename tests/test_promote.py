"""`emotune promote` and `emotune predict` on a model trained by a small real sweep, recorded in a real `mlflow server`
on 127.0.0.1: the promotion gate (test subjects, bootstrap interval, alias moved only by a better model), the
prediction's CCC on a synthetic test video against its labels, and (``-m slow``) the pyfunc loaded in a fresh process
and the README's lines."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cluster.cli import main
from test_cluster import BIN, start_mlflow_server, wait_for_port
from test_sweep_e2e import SPACE, emotune, synth_and_prepare

#: What the best of 2 one-epoch trials reaches on the test subject (measured: test CCC 0.10 after its
#: post-processing, the same through `emotune predict` on the raw video as on the cached test split).
CCC_THRESHOLD = 0.05


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real mlflow server, a 3-subject synthetic dataset and a sweep of 2 one-epoch trials recorded in it."""
    work = tmp_path_factory.mktemp("promote")
    server, port = start_mlflow_server(work)
    try:
        index, _ = synth_and_prepare(work)
        (work / "e2e.yaml").write_text(SPACE)
        wait_for_port(port, timeout=120)
        uri = f"http://127.0.0.1:{port}"
        emotune("sweep", "--space", "e2e.yaml", "--data", str(index), "--trials", "2", "--epochs", "1",
                "--name", "sw", "--mlflow-uri", uri, cwd=work)
        yield work, uri, index
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:  # its workers take their time to exit; the store is a test's scratch
            os.killpg(server.pid, 9)
            server.wait(timeout=30)


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _scored_videos(subjects: int, videos_per_subject: int = 2, seed: int = 0):
    """Hand-made test videos (labels and noisy predictions), ``videos_per_subject`` per subject."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    videos, owner, preds = [], {}, {}
    for s in range(subjects):
        for v in range(videos_per_subject):
            labels = rng.uniform(-1, 1, (40, 2)).astype(np.float32)
            vid = f"s{s}_v{v}"
            videos.append(SimpleNamespace(video_id=vid, labels=labels))
            owner[vid] = f"s{s}"
            preds[vid] = labels + rng.normal(0, 0.2 + 0.3 * s, labels.shape).astype(np.float32)
    return videos, owner, preds


@pytest.mark.parametrize("subjects", [1, 2, 3])
def test_fewer_than_four_test_subjects_give_no_interval(subjects):
    """A bootstrap over 1-3 subjects has 1-10 distinct resamples: no interval is computed, and the text says why."""
    from analysis.scoring import MIN_SUBJECTS_FOR_INTERVAL, score

    assert MIN_SUBJECTS_FOR_INTERVAL == 4
    videos, owner, preds = _scored_videos(subjects)
    result = score(videos, owner, preds, "ccc_mean", draws=50)
    assert result.low is None and result.high is None and not result.has_interval
    assert result.subjects == subjects and 0.0 < result.value < 1.0
    assert result.text() == f"{result.value:.4f} (no interval: {subjects} test subject(s))"


@pytest.mark.parametrize("subjects", [4, 7])
def test_four_or_more_test_subjects_give_a_bootstrap_interval(subjects):
    from analysis.scoring import score

    videos, owner, preds = _scored_videos(subjects)
    result = score(videos, owner, preds, "ccc_mean", draws=200)
    assert result.has_interval and result.low <= result.value <= result.high and result.low < result.high
    assert result.subjects == subjects
    assert result.text() == (f"{result.value:.4f} (95% CI {result.low:.4f}..{result.high:.4f}, {subjects} test "
                             f"subject(s))")


@pytest.fixture(scope="module")
def baseline(swept):
    """A model that predicts a constant (all weights zero: test CCC 0) holds the alias before the first promotion."""
    import torch

    from analysis.models import resolve_model
    from analysis.promote import find_sweep
    from analysis.registry import force_production

    work, uri, _ = swept
    best = find_sweep(_client(uri), "sw").data.tags["emotune.best_run_id"]
    bundle = resolve_model(f"runs:/{best}", uri)
    bundle.weights = {k: torch.zeros_like(v) for k, v in bundle.weights.items()}
    bundle.postprocess = {}
    return force_production(bundle, uri, tags={"emotune.baseline": "constant"})


def test_a_better_model_moves_the_alias_an_equal_one_is_refused(swept, baseline, capsys, tmp_path):
    work, uri, _ = swept
    client = _client(uri)
    assert client.get_model_version_by_alias("emotune", "production").version == baseline

    assert main(["promote", "sw", "--mlflow-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # one test subject: no bootstrap interval is printed or stored (its percentiles would be the value twice)
    assert re.search(r"promoted: trial \w+ of sweep sw scores test ccc_mean -?\d\.\d{4} "
                     r"\(no interval: 1 test subject\(s\)\)", out), out
    assert f"version {baseline} scored 0.0000" in out
    held = client.get_model_version_by_alias("emotune", "production")
    assert held.version != baseline
    prod = yaml.safe_load((tmp_path / "production.yaml").read_text())
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
                  if r.data.tags.get("emotune.sweep") == "sw" and "emotune.promotion" not in r.data.tags)
    assert prod["trial_run_id"] == parent.data.tags["emotune.best_run_id"] and prod["version"] == held.version
    assert prod["registration"]["size"] == 32 and prod["config"]["backbone"] == "cnn_rnn_tiny"
    assert prod["test"]["value"] > prod["previous"]["value"] == 0.0
    assert prod["test"]["subjects"] == 1 and "ci95" not in prod["test"]
    promote_run = client.get_run(held.run_id)
    for tags in (held.tags, promote_run.data.tags):
        assert tags["emotune.test_subjects"] == "1" and not any("ci95" in k for k in tags), tags
    assert not any("ci95" in k for k in promote_run.data.metrics)
    logged = json.loads(Path(client.download_artifacts(held.run_id, "production.json", str(tmp_path))).read_text())
    assert logged["test"] == prod["test"]
    assert held.tags["emotune.sweep"] == "sw" and held.tags["emotune.data_index_sha1"] == \
        parent.data.params["data_index_sha1"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", held.tags["emotune.git_commit"])  # the sweep's rule, one git_commit

    # the same model again: not better by more than the margin -> refused with both figures, alias left alone
    assert main(["promote", "sw", "--mlflow-uri", uri, "--out", str(tmp_path / "again")]) == 1
    out = capsys.readouterr().out
    figures = re.findall(r"ccc_mean (-?\d\.\d{4})|scores (-?\d\.\d{4})", out)
    assert out.startswith("not promoted:") and len(figures) == 2, out
    assert f"the alias 'production' stays on version {held.version}" in out
    assert client.get_model_version_by_alias("emotune", "production").version == held.version
    assert not (tmp_path / "again" / "production.yaml").exists()


def test_predict_a_synthetic_test_video_with_the_best_trial(swept, capsys, tmp_path):
    """The best trial's checkpoint (runs:/) predicts the raw test video; its CCC against the synthetic labels is the
    one promotion measures on the cached test split, and above the stated threshold."""
    from analysis.models import resolve_model
    from analysis.promote import find_sweep
    from analysis.scoring import predict_cached, score, test_split
    from trainables.objectives.metrics import regression_report

    work, uri, index = swept
    best = find_sweep(_client(uri), "sw").data.tags["emotune.best_run_id"]
    manifest = pd.read_csv(work / "data" / "manifest.csv")
    test = manifest[manifest.split == "test"].iloc[0]
    assert main(["predict", str(work / "data" / test.path), "--model", f"runs:/{best}", "--mlflow-uri", uri,
                 "--detector", "precomputed", "--faces", str(work / "data" / test.faces), "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / f"{Path(test.path).stem}.csv")
    labels = pd.read_csv(work / "data" / test.labels)
    assert len(table) == len(labels)  # one row per label step (labels per frame)
    ccc = regression_report(labels[["valence", "arousal"]].to_numpy(), table[["valence", "arousal"]].to_numpy())
    videos, subjects = test_split(str(index))
    cached = score(videos, subjects, predict_cached(resolve_model(f"runs:/{best}", uri), videos), "ccc_mean", draws=10)
    print(f"test video {test.video_id}: CCC valence {ccc['ccc_valence']:.3f}, arousal {ccc['ccc_arousal']:.3f}, "
          f"mean {ccc['ccc_mean']:.3f} (threshold {CCC_THRESHOLD}); cached test split {cached.value:.3f}")
    assert ccc["ccc_mean"] == pytest.approx(cached.value, abs=1e-3)
    assert ccc["ccc_mean"] >= CCC_THRESHOLD


@pytest.mark.slow
def test_pyfunc_in_a_fresh_process_and_the_readme_lines(swept, baseline, tmp_path):
    """The README's promotion and prediction lines as written, then the production pyfunc loaded in a fresh Python
    process with nothing imported by hand: the same rows as the CSV, plus the video column."""
    from test_predict import astronaut_clip

    work, uri, _ = swept
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Promotion and prediction\n", 1)[1].split("\n## ", 1)[0]
    bash, python = re.findall(r"```bash\n(.*?)```", section, re.S), re.findall(r"```python\n(.*?)```", section, re.S)
    video = astronaut_clip(tmp_path / "interview.mp4")
    env = {"SWEEP": "sw", "MLFLOW": uri, "VIDEO": str(video)}
    for line in bash[0].replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = [os.path.expandvars(a) if "$" in a else a for a in line.split()]
        for k, v in env.items():
            args = [a.replace(f"${k}", v) for a in args]
        assert args[0] == "emotune"
        proc = subprocess.run([str(BIN / "emotune"), *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode in (0, 1), proc.stderr[-3000:]  # promote refuses (1) when production is as good
    csv = pd.read_csv(tmp_path / "predictions" / "interview.csv")
    script = python[0].replace('"interview.mp4"', json.dumps(str(video)))
    script += "\nrows.to_csv('pyfunc.csv', index=False)\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "pyfunc.csv")
    assert list(rows.columns) == ["video", "time", "valence", "arousal", "face"]
    assert (rows["video"] == str(video)).all() and len(rows) == len(csv)
    assert np.allclose(rows[["time", "valence", "arousal"]].to_numpy(), csv[["time", "valence", "arousal"]].to_numpy(),
                       atol=1e-5)
    assert (rows["face"] == csv["face"]).all() and csv["face"].mean() >= 0.95


def test_promotion_leaves_the_process_mlflow_settings_alone(swept, baseline, tmp_path):
    """Promotion and registry downloads name their store on each call and never set MLflow's process-wide URIs: no
    MLFLOW_* variable is left behind for later subprocesses (they would talk to this test's server after it stopped),
    and a registered model is found on the given store while the process's own tracking URI points elsewhere."""
    import mlflow

    from analysis.models import download_registered

    work, uri, _ = swept
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking = mlflow.get_tracking_uri()
    assert tracking != uri
    assert download_registered(f"models:/emotune/{baseline}", uri, tmp_path).is_file()
    assert download_registered("models:/emotune@production", uri, tmp_path / "alias").is_file()
    assert {k: os.environ.get(k) for k in before} == before and mlflow.get_tracking_uri() == tracking
    # the tests above promoted in this process
    assert uri not in (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))


@pytest.fixture(scope="module")
def retrained(swept, tmp_path_factory):
    """``emotune promote sw --retrain-top 2 --seeds 2`` once, by the installed command (it starts Ray, which this test
    process must not keep running): (its output, the folder of its production.yaml)."""
    work, uri, _ = swept
    out_dir = tmp_path_factory.mktemp("retrained")
    out = emotune("promote", "sw", "--mlflow-uri", uri, "--model-name", "emotune-retrained", "--out", str(out_dir),
                  "--retrain-top", "2", "--seeds", "2", cwd=out_dir).stdout
    return out, out_dir


def _copy_without_kind(client, parent, name: str):
    """A copy of the sweep ``parent`` and its trials under the sweep name ``name``, recorded as emotune recorded sweeps
    before runs had a kind (no ``emotune.kind`` tag anywhere)."""
    from mlflow.entities import Metric, Param

    def own_tags(run) -> dict:
        return {k: v for k, v in run.data.tags.items() if k != "emotune.kind" and not k.startswith("mlflow.")}

    experiment = parent.info.experiment_id
    copy = client.create_run(experiment, run_name=name, tags={**own_tags(parent), "emotune.sweep": name}).info.run_id
    client.log_batch(copy, params=[Param(k, v) for k, v in parent.data.params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(copy, client.download_artifacts(parent.info.run_id, parent.data.tags["emotune.space_file"],
                                                            tmp))
    for child in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        trial = client.create_run(experiment, run_name=child.info.run_name,
                                  tags={**own_tags(child), "mlflow.parentRunId": copy}).info.run_id
        history = [Metric(key, m.value, m.timestamp, m.step) for key in child.data.metrics
                   for m in client.get_metric_history(child.info.run_id, key)]
        client.log_batch(trial, metrics=history, params=[Param(k, v) for k, v in child.data.params.items()])
        client.set_terminated(trial, child.info.status)
    client.set_terminated(copy, parent.info.status)
    return client.get_run(copy)


def test_a_sweep_name_means_its_sweep_after_promotion_and_retraining(swept, tmp_path, capsys, request):
    """A promotion's run carries its sweep's name as lineage (``emotune.sweep``) and a retraining records a parent run
    of its own: ``emotune report`` and ``emotune compare`` still read the sweep (its parent run is the one of kind
    ``sweep``), after ``emotune promote`` and after ``emotune promote --retrain-top``. The second sweep compared is
    a copy recorded without any kind, as stores written before the kind tag hold sweeps."""
    work, uri, _ = swept
    client = _client(uri)
    experiment = client.get_experiment_by_name("emotune").experiment_id
    parent, = client.search_runs([experiment], "tags.`emotune.sweep` = 'sw' and tags.`emotune.kind` = 'sweep'")
    trials = {r.data.tags["emotune.trial_id"]
              for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    best = client.get_run(parent.data.tags["emotune.best_run_id"]).data.metrics["best_val_ccc_mean"]
    legacy = _copy_without_kind(client, parent, "sw-legacy")
    assert "emotune.kind" not in legacy.data.tags and len(trials) == 2

    def report_and_compare(stage: str) -> None:
        assert main(["report", "sw", "--mlflow-uri", uri, "--out", str(tmp_path / stage),
                     "--optuna-storage", f"sqlite:///{work / 'optuna.db'}"]) == 0
        assert f"logged to MLflow parent run {parent.info.run_id} under report/" in capsys.readouterr().out, stage
        board = (tmp_path / stage / "report.html").read_text().split("<h3>Leaderboard</h3>")[1].split("</table>")[0]
        assert set(re.findall(r"<tr><td>\d+</td><td>([0-9a-f]+)</td>", board)) == trials, stage

        assert main(["compare", "sw", "sw-legacy", "--mlflow-uri", uri]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["sw", "sw-legacy"], stage
        width = lines[0].index("sw")
        row = {line[:width].strip(): line[width:].split() for line in lines[1:] if line.startswith("  ")}
        assert row["trials"] == ["2", "2"] and row["study"] == ["e2e", "e2e"], (stage, row)
        assert row["best objective"] == [f"{best:.4f}"] * 2, (stage, row)

    # a new model name: nothing holds its alias, so this promotion registers a model (a promotion run named after sw)
    assert main(["promote", "sw", "--mlflow-uri", uri, "--model-name", "emotune-lookup", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    promotions = client.search_runs([experiment], "tags.`emotune.sweep` = 'sw' and tags.`emotune.kind` = 'promotion'")
    assert promotions and all("mlflow.parentRunId" not in r.data.tags for r in promotions)
    report_and_compare("after-promote")

    request.getfixturevalue("retrained")
    retrain, = client.search_runs([experiment], "tags.`emotune.retrain_of` = 'sw'")
    assert retrain.data.tags["emotune.kind"] == "retrain"
    report_and_compare("after-retrain-top")
    # the sweep's run id names it too; a promotion's run id names no sweep
    assert main(["compare", parent.info.run_id, legacy.info.run_id, "--mlflow-uri", uri]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["sw", "sw-legacy"]
    assert main(["report", promotions[0].info.run_id, "--mlflow-uri", uri]) == 2
    assert capsys.readouterr().err.startswith("emotune: error: no sweep ")


def test_retrain_top_k_with_seeds_reports_mean_and_spread_and_promotes_the_chosen_run(swept, retrained, tmp_path):
    """``--retrain-top 2 --seeds 2``: the sweep's 2 configurations trained twice each in a real Tune run recorded under
    a retrain parent run; the seed the sweep used reproduces the sweep's value (CPU training is deterministic), the
    printed mean and spread are those of the recorded runs, and the promoted version's lineage names the retraining."""
    from analysis.promote import find_sweep

    work, uri, _ = swept
    client = _client(uri)
    sweep_runs = client.search_runs([find_sweep(client, "sw").info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{find_sweep(client, 'sw').info.run_id}'")
    sweep_values = {r.data.tags["emotune.trial_id"]: r.data.metrics["best_val_ccc_mean"] for r in sweep_runs}
    out, out_dir = retrained
    rows = re.findall(r"trial (\w+): sweep (-?\d\.\d{4}); retrained (-?\d\.\d{4}) \+- (\d\.\d{4}) \(n=2\)", out)
    assert len(rows) == 2, out
    retrain = client.search_runs([find_sweep(client, "sw").info.experiment_id], "tags.`emotune.retrain_of` = 'sw'")
    assert len(retrain) == 1
    children = client.search_runs([retrain[0].info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{retrain[0].info.run_id}'")
    assert len(children) == 4
    by_trial: dict[str, dict[int, float]] = {}
    for child in children:
        config = json.loads(Path(client.download_artifacts(child.info.run_id, "config.json", str(tmp_path))).read_text())
        by_trial.setdefault(config["runtime"]["origin"], {})[config["seed"]] = child.data.metrics["best_val_ccc_mean"]
        assert config["epochs"] == 1
    for trial, sweep_value, mean, std in rows:
        values = by_trial[trial]
        assert sorted(values) == [0, 1]
        assert values[0] == pytest.approx(sweep_values[trial], abs=1e-4)  # the sweep's own seed, trained again
        assert float(sweep_value) == pytest.approx(sweep_values[trial], abs=1e-4)
        assert float(mean) == pytest.approx(np.mean(list(values.values())), abs=1e-4)
        assert float(std) == pytest.approx(np.std(list(values.values()), ddof=1), abs=1e-4)
    chosen = max(rows, key=lambda r: float(r[2]))[0]
    assert re.search(rf"trial {chosen}: .*<- chosen", out)
    produced = yaml.safe_load((out_dir / "production.yaml").read_text())
    assert produced["trial"] == chosen and produced["retrain"]["run_id"] == retrain[0].info.run_id
    version = client.get_model_version_by_alias("emotune-retrained", "production")
    assert version.tags["emotune.retrain_run_id"] == retrain[0].info.run_id
    assert version.tags["emotune.trial_run_id"] == produced["retrain"]["candidate_run_id"]
    assert max(by_trial[chosen].values()) == pytest.approx(
        client.get_run(produced["retrain"]["candidate_run_id"]).data.metrics["best_val_ccc_mean"], abs=1e-9)
