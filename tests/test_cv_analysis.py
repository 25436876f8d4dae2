"""What a cross-validated sweep learned, through the real entry points on one small real CV sweep (2 subject folds of
the 3-subject synthetic dataset, 3 trials x 2 epochs per fold, one at a time, ASHA racing them; recorded beside a copy
of the one-split sweeps of ``tests/test_report.py``): the leaderboard printed after the sweep and the report's
leaderboard (mean ± sd over folds, folds done, status, ranking, the within-one-sd marks) checked against the fold runs'
records, the report's strip plot and fold-epochs saved by racing against an independent count, ``emotune compare`` of
the CV sweep with a one-split one, and (``-m slow``: it starts Ray again for about a minute) ``emotune promote`` of the
CV sweep: a refit on every non-test subject for the median of the best trial's folds' best epochs, registered, and the
report after it. Hand-made cases of the ranking rules need no sweep."""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from test_report import cli, tiny_sweeps
from test_sweep_e2e import emotune

FOLDS, EPOCHS = 2, 2


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """Sweep ``cv`` (``--folds 2``, experiment ``cv``) in a copy of the store that holds the one-split sweeps ``rep``
    and ``rep-b`` (``tiny_sweeps``), on their dataset: (folder, dataset index, what the sweep printed)."""
    base = tiny_sweeps(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("cv")
    for name in ("mlflow.db", "optuna.db", "e2e.yaml"):
        shutil.copy(base / name, work / name)
    index, = (base / "cache").glob("index-*.json")
    # One trial at a time: the first trial meets no rival at ASHA's rungs and finishes every fold.
    out = emotune("sweep", "--space", "e2e.yaml", "--data", str(index), "--folds", str(FOLDS), "--trials", "3",
                  "--epochs", str(EPOCHS), "--max-concurrent", "1", "--name", "cv", "--experiment", "cv", "--seed",
                  "1", cwd=work).stdout
    return work, index, out


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _parent(client, name: str = "cv"):
    run, = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`emotune.sweep` = '{name}' and tags.`emotune.kind` = 'sweep'")
    return run


def _children(client, run):
    return client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")


def expected(client) -> dict[str, dict]:
    """Each trial of sweep ``cv`` as its fold runs record it, computed here from the runs: the scores of its finished
    folds (``fold_score``), their mean and sample sd, whether it finished every fold, the fold-epochs it ran (the
    epochs its fold runs logged) and its fold runs' best epochs."""
    trials = {}
    for run in _children(client, _parent(client)):
        folds = sorted(_children(client, run), key=lambda r: int(r.data.tags["emotune.fold"]))
        done = [f for f in folds if "fold_score" in f.data.metrics and f.data.tags.get("emotune.fold_complete") != "false"]
        scores = [f.data.metrics["fold_score"] for f in done]
        epochs = sum(len(client.get_metric_history(f.info.run_id, "val_ccc_mean")) for f in folds)
        trials[run.data.tags["emotune.trial_id"]] = {
            "run": run, "scores": scores, "mean": float(np.mean(scores)) if scores else math.nan,
            "sd": statistics.stdev(scores) if len(scores) > 1 else math.nan, "complete": len(scores) == FOLDS,
            "fold_epochs": epochs, "best_epochs": [int(f.data.metrics["best_epoch"]) for f in done],
            "failed": run.info.status == "FAILED"}
    return trials


def _near(trials: dict[str, dict]) -> set[str]:
    """Trials within one sd of the best, computed here: complete trials whose mean is within the best's sd."""
    complete = {t: v for t, v in trials.items() if v["complete"]}
    best = max(complete.values(), key=lambda v: v["mean"])
    return {t for t, v in complete.items() if best["mean"] - v["mean"] <= best["sd"] + 1e-12}


def _cell(v: dict) -> str:
    if not v["scores"]:
        return "-"
    return f"{v['mean']:.4f}" + (f" ± {v['sd']:.4f}" if len(v["scores"]) > 1 else "")


def _check_board(rows: list[tuple[str, bool, str, str, str]], trials: dict[str, dict]) -> None:
    """rows: (trial, marked, folds, status, mean ± sd) in rank order, against the fold runs."""
    assert sorted(r[0] for r in rows) == sorted(trials)
    for trial, marked, folds, status, cell in rows:
        v = trials[trial]
        assert folds == f"{len(v['scores'])}/{FOLDS}", trial
        assert status == ("complete" if v["complete"] else "stopped early"), trial
        assert cell == _cell(v), trial
        assert marked == (trial in _near(trials)), trial
    complete = [r[0] for r in rows if trials[r[0]]["complete"]]
    assert [r[0] for r in rows[:len(complete)]] == complete  # every complete trial ranks above the others
    means = [trials[t]["mean"] for t in complete]
    assert means == sorted(means, reverse=True)
    assert [len(trials[r[0]]["scores"]) for r in rows[len(complete):]] == \
        sorted((len(trials[r[0]]["scores"]) for r in rows[len(complete):]), reverse=True)


def test_the_printed_leaderboard_shows_mean_and_sd_over_folds(cv):
    work, _, out = cv
    client = _client(work)
    trials = expected(client)
    assert any(v["complete"] for v in trials.values()), out
    board = out.split("Leaderboard of sweep cv ")[1]
    assert board.startswith(f"(3 trials, objective val_ccc_mean, mean over {FOLDS} subject folds):")
    head = board.splitlines()[1]
    assert head.split()[:3] == ["rank", "≈", "trial"] and head.rstrip().endswith("val_ccc_mean mean ± sd")
    rows = []
    for line in board.splitlines()[3:]:
        if not line[:1].isdigit():
            break
        m = re.fullmatch(r"\d+\s+(≈)?\s*([0-9a-f]{8})\s.*?\s(\d+/\d+)\s+\d+\s+(complete|stopped early)\s+"
                         r"(?:-?\d\.\d{4}|-)\s+(?:-?\d\.\d{4}|-)\s+(-?\d\.\d{4}(?: ± \d\.\d{4})?|-)", line)
        assert m, line
        rows.append((m[2], m[1] == "≈", m[3], m[4], m[5]))
    _check_board(rows, trials)
    counts = re.search(r"Trials:\s+(\d+) complete, (\d+) stopped early", out)
    assert int(counts[1]) == sum(v["complete"] for v in trials.values())
    best = _parent(client).data.tags["emotune.best_trial"]
    assert best == max((t for t in trials if trials[t]["complete"]), key=lambda t: trials[t]["mean"])


def _table(page: str, title: str) -> list[list[str]]:
    body = page.split(f"<h3>{title}</h3>")[1].split("</table>")[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(<td>.*?)</tr>", body)]


@pytest.fixture(scope="module")
def report(cv, tmp_path_factory):
    """``emotune report cv`` (the CLI's ``main``, in this process): (its folder, the page)."""
    from cluster.cli import main

    work, _, _ = cv
    out = tmp_path_factory.mktemp("cv-report")
    assert main(["report", "cv", "--out", str(out), "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}",
                 "--optuna-storage", f"sqlite:///{work / 'optuna.db'}"]) == 0
    return out, (out / "report.html").read_text()


def test_the_report_leaderboard_strip_plot_and_racing_savings(cv, report):
    work, _, _ = cv
    client = _client(work)
    trials = expected(client)
    out, page = report
    rows = _table(page, "Leaderboard")
    head = re.findall(r"<th>(.*?)</th>", page.split("<h3>Leaderboard</h3>")[1].split("</thead>")[0])
    col = {h: i for i, h in enumerate(head)}
    _check_board([(r[col["trial"]], r[col["≈"]] == "≈", r[col["folds"]], r[col["status"]],
                   r[col["val_ccc_mean mean ± sd"]]) for r in rows], trials)
    for r in rows:  # the pooled out-of-fold CCC of a complete trial, as it recorded it
        v = trials[r[col["trial"]]]
        pooled = v["run"].data.metrics.get("cv_pooled_val_ccc_valence")
        assert r[col["pooled ccc_valence"]] == (f"{pooled:.4f}" if v["complete"] else "-")
        assert r[col["fold-epochs"]] == str(v["fold_epochs"])

    # the strip plot of the top trials' fold scores, on the page, on disk and in the parent run's artifacts
    shown = sum(bool(v["scores"]) for v in trials.values())  # every trial with a finished fold (at most 10)
    assert "<img src='figures/folds.png'" in page and f"Per-fold val_ccc_mean of the top {shown} trials" in page
    assert (out / "figures" / "folds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(_parent(client).info.run_id, "report/figures")}
    assert "report/figures/folds.png" in logged

    # fold-epochs saved by racing: K x E per trial that ended without an error, less the fold-epochs its folds ran
    ended = [v for v in trials.values() if not v["failed"]]
    full = FOLDS * EPOCHS * len(ended)
    saved = full - sum(v["fold_epochs"] for v in ended)
    text = re.search(r"<p class='racing'>(\d+) of (\d+) fold-epochs \((\d+\.\d)%\)", page)
    assert text and (int(text[1]), int(text[2])) == (saved, full), page
    assert text[3] == f"{100 * saved / full:.1f}"
    assert "<th>refits</th><td>none (" in page  # nothing promoted yet
    summary = re.search(r"<th>fold-epochs saved by racing</th><td>(\d+) of (\d+)", page)
    assert (int(summary[1]), int(summary[2])) == (saved, full)
    folds = json.loads(Path(client.download_artifacts(_parent(client).info.run_id, "folds.json", str(out))).read_text())
    assert _table(page, "Folds") == [[str(i), ", ".join(f)] for i, f in enumerate(folds["folds"], 1)]


def test_compare_a_cv_sweep_with_a_one_split_sweep(cv, capsys, tmp_path):
    work, _, _ = cv
    client = _client(work)
    status, out, _ = cli("compare", "cv", "rep", "--out", str(tmp_path), cwd=work, capsys=capsys)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["cv", "rep"]
    width = lines[0].index("cv")
    row = {line[:width].strip(): line[width:].split() for line in lines[1:] if line.startswith("  ")}
    assert row["experiment"] == ["cv", "emotune"]
    assert row["validation"] == [f"{FOLDS}-fold", "CV", "one", "split"]
    trials = expected(client)
    best_cv = _parent(client).data.tags["emotune.best_trial"]
    one = client.get_run(_parent(client, "rep").data.tags["emotune.best_run_id"]).data.metrics
    assert row["best objective"] == [f"{trials[best_cv]['mean']:.4f}", f"{one['best_val_ccc_mean']:.4f}"]
    assert row["sd over folds"] == [f"{trials[best_cv]['sd']:.4f}", "-"]
    assert row["every fold done"] == [str(sum(v["complete"] for v in trials.values())), "-"]
    assert row["val_ccc_valence"][0] == f"{trials[best_cv]['run'].data.metrics['cv_pooled_val_ccc_valence']:.4f}"
    assert row["best epoch (CV: median over folds)"][0] == f"{statistics.median(trials[best_cv]['best_epochs']):g}"
    assert "cv" not in row  # the fold plan is said by the validation row, not listed as a differing setting
    note = [line for line in lines if line.startswith("note: cv: ")]  # (a hypervolume note may stand beside it)
    assert len(note) == 1 and note[0].startswith("note: cv: cross-validated (best objective = mean over subject folds")
    assert "rep: one split" in note[0]
    assert "note: cv: cross-validated" in (tmp_path / "compare.html").read_text()


@pytest.fixture(scope="module")
def promoted(cv, tmp_path_factory):
    """``emotune promote cv`` once, by the installed command (it starts Ray, which this process must not keep):
    (its output, the folder of its production.yaml)."""
    work, _, _ = cv
    out_dir = tmp_path_factory.mktemp("cv-promoted")
    out = emotune("promote", "cv", "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}", "--model-name", "emotune-cv",
                  "--out", str(out_dir), cwd=work).stdout
    return out, out_dir


@pytest.mark.slow
def test_promote_refits_the_best_configuration_for_the_median_best_epoch(cv, promoted, tmp_path, capsys):
    from analysis.models import resolve_model

    work, index, _ = cv
    client = _client(work)
    parent = _parent(client)
    trials = expected(client)
    best = parent.data.tags["emotune.best_trial"]
    epochs = max(1, math.floor(statistics.median(trials[best]["best_epochs"]) + 0.5))  # rounded half up
    out, out_dir = promoted

    refit, = client.search_runs([parent.info.experiment_id], "tags.`emotune.refit_of` = 'cv'")
    assert refit.data.tags["emotune.kind"] == "refit" and refit.info.status == "FINISHED"
    assert refit.data.tags["emotune.refit_of_run_id"] == parent.info.run_id
    assert refit.data.tags["emotune.refit_trial"] == best
    run, = _children(client, refit)
    assert refit.data.tags["emotune.refit_run_id"] == run.info.run_id
    # trained on every non-test subject for the median best epoch count, nothing validated, its CV value carried
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
    sweep_config = json.loads(Path(client.download_artifacts(trials[best]["run"].info.run_id, "config.json",
                                                             str(tmp_path / "trial"))).read_text())
    assert "cv" not in config and config["epochs"] == config["max_units"] == config["refit"]["epochs"] == epochs
    assert {k: v for k, v in config.items() if k not in ("cv", "refit", "epochs", "max_units", "runtime")} == \
        {k: v for k, v in sweep_config.items() if k not in ("cv", "epochs", "max_units", "runtime")}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, epochs + 1))
    assert run.data.tags["emotune.epochs_run"] == str(epochs) and run.data.tags["emotune.stopped_early"] == "false"
    assert config["refit"]["value"] == pytest.approx(trials[best]["mean"], abs=1e-9)
    pooled = json.loads(Path(client.download_artifacts(trials[best]["run"].info.run_id, "checkpoint/cv_postprocess.json",
                                                       str(tmp_path / "pp"))).read_text())
    assert config["refit"]["postprocess"] == pooled

    # registered: the promoted version is the refit's model, with its post-processing and lineage
    assert re.search(rf"refit trial {best} of sweep cv \(val_ccc_mean -?\d\.\d{{4}} ± \d\.\d{{4}} over {FOLDS} "
                     rf"subject folds\) on every non-test subject for {epochs} epoch\(s\)", out), out
    assert re.search(rf"promoted: the refit of trial {best} of sweep cv scores test ccc_mean -?\d\.\d{{4}}", out), out
    version = client.get_model_version_by_alias("emotune-cv", "production")
    assert version.tags["emotune.trial_run_id"] == run.info.run_id and version.tags["emotune.trial"] == best
    assert version.tags["emotune.refit_run_id"] == refit.info.run_id
    assert version.tags["emotune.refit_epochs"] == str(epochs)
    produced = yaml.safe_load((out_dir / "production.yaml").read_text())
    assert produced["refit"]["epochs"] == epochs and produced["trial_run_id"] == run.info.run_id
    bundle = resolve_model("models:/emotune-cv@production", f"sqlite:///{work / 'mlflow.db'}")
    assert bundle.postprocess == pooled
    # the test subjects are the index's test split, scored once
    test = [v for v in json.loads(Path(index).read_text())["videos"] if v["split"] == "test"]
    assert produced["test"]["subjects"] == len({v["subject"] for v in test})

    # the report still reads the sweep (the refit and the promotion are runs of their own kinds)
    status, said, _ = cli("report", "cv", "--out", str(tmp_path / "after"), cwd=work, capsys=capsys)
    assert status == 0 and f"logged to MLflow parent run {parent.info.run_id} under report/" in said
    page = (tmp_path / "after" / "report.html").read_text()
    assert sorted(r[2] for r in _table(page, "Leaderboard")) == sorted(trials)
    assert re.search(rf"<th>refits</th><td>trial {best} for {epochs} epoch\(s\) on every non-test subject, run "
                     rf"{run.info.run_id} \(finished\)</td>", page)


def test_user_errors_on_a_cv_sweep(cv, capsys):
    """``--retrain-top`` on a CV sweep is refused in one line before anything runs; the API refuses a CV sweep's
    fold model as a candidate."""
    from analysis.promote import promote
    from trainables.errors import UserError

    work, _, _ = cv
    uri = f"sqlite:///{work / 'mlflow.db'}"
    status, _, err = cli("promote", "cv", "--mlflow-uri", uri, "--retrain-top", "2", cwd=work, capsys=capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("emotune: error: --retrain-top does not apply to sweep 'cv': it is cross-validated")
    with pytest.raises(UserError, match="is cross-validated: its trials' checkpoints are fold models"):
        promote("cv", uri, model_name="never")


# ---- the rules on hand-made trials (no sweep needed) ----

def test_cv_standing_text_and_rank():
    from analysis.leaderboard import CV, cv_rank_key, near_best

    full = CV.of(3, [0.4, 0.5, 0.3])
    assert full.complete and full.text() == "0.4000 ± 0.1000" and full.folds_text() == "3/3"
    assert CV.of(3, [0.11]).text() == "0.1100" and CV.of(3, []).text() == "-"
    recorded = CV.of(2, [0.2, 0.4], mean=0.31, sd=0.05)  # the trial's own cv_mean / cv_sd win
    assert (recorded.mean, recorded.sd) == (0.31, 0.05)
    cvs = [CV.of(3, [0.1, 0.2]), CV.of(3, [0.30, 0.32, 0.34]), CV.of(3, [0.2, 0.25, 0.30]),
           CV.of(3, [0.9]), CV.of(3, [0.9, 0.9, 0.9]), CV.of(3, [])]
    statuses = ["stopped early", "complete", "complete", "stopped early", "errored", "stopped early"]
    order = sorted(range(len(cvs)), key=lambda i: cv_rank_key(cvs[i], statuses[i], "max"))
    assert order == [1, 2, 0, 3, 5, 4]  # complete by mean, then by folds finished, none finished, errored
    # within one sd: the best (0.32 ± 0.02) and nothing at 0.25 (0.07 below); an errored trial never
    assert near_best(cvs, statuses, "max") == [False, True, False, False, False, False]
    assert near_best([CV.of(2, [0.30, 0.50]), CV.of(2, [0.25, 0.30])], ["complete"] * 2, "max") == [True, True]
    # mode min: the lowest mean is best
    assert near_best([CV.of(2, [1.0, 1.2]), CV.of(2, [2.0, 2.1])], ["complete"] * 2, "min") == [True, False]


def test_a_trial_stopped_in_a_later_fold_is_not_complete():
    """From Tune's results: a trial that finished fold 1 of 3 and was stopped after fold 2's last epoch has 2/3
    folds and is stopped early, though it reached the last epoch of a fold."""
    from analysis.leaderboard import rows_from_results

    def result(trial: str, reports: list[tuple[int, int, float]], last: dict | None = None):
        rows = []
        for fold, epoch, value in reports:
            done = fold - 1 + (epoch == EPOCHS)
            rows.append({"fold": fold, "fold_epoch": epoch, "fold_epochs": (fold - 1) * EPOCHS + epoch,
                         "folds_done": done, "fold_best": value, "val_ccc_mean": value, "epoch": epoch})
        return SimpleNamespace(metrics_dataframe=pd.DataFrame(rows), config={"lr": 1e-3}, error=None,
                               metrics={**rows[-1], "trial_id": trial, **(last or {})})

    full = [(1, 1, 0.1), (1, 2, 0.3), (2, 1, 0.2), (2, 2, 0.5), (3, 1, 0.1), (3, 2, 0.4)]
    results = [result("a", full[:4]),
               result("b", full, {"cv_mean": 0.4, "cv_sd": 0.1, "cv_pooled_val_ccc_valence": 0.35}),
               result("c", full[:1])]
    rows = rows_from_results(results, "val_ccc_mean", "max", ["lr"], EPOCHS, folds=3)
    assert [(r.trial_id, r.status, r.cv.folds_text(), r.cv.text(), r.near) for r in rows] == [
        ("b", "complete", "3/3", "0.4000 ± 0.1000", True), ("a", "stopped early", "2/3", "0.4000 ± 0.1414", False),
        ("c", "stopped early", "0/3", "-", False)]
    assert rows[0].dims == {"val_ccc_valence": 0.35} and rows[1].dims == {} and math.isnan(rows[1].objective)


@pytest.mark.parametrize("median, epochs", [(1.0, 1), (1.5, 2), (2.5, 3), (0.4, 1), (0.0, 1), (3.49, 3)])
def test_refit_epochs_round_the_median_half_up(median, epochs):
    from cluster.retrain import refit_epochs

    assert refit_epochs(median) == epochs
