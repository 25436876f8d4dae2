"""Subject K-fold cross-validated sweeps: the fold plan (trainables/prepare/folds.py), the manifest's fold column, the
study key, bad input refused before any trial starts, and the README's CV example run as written, its records checked
number by number against the trials' own checkpoints (trainables/crossval.py, cluster/tracking.py)."""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from search_spaces.schema import SpaceError, load_space
from tests.test_readme import code_blocks, commands
from tests.test_sweep_e2e import emotune, run_cli
from trainables.errors import UserError
from trainables.prepare.folds import FoldPlan, fold_split, plan_folds
from trainables.prepare.manifest import ManifestError, read_manifest


@pytest.fixture(scope="module")
def readme_cv(tmp_path_factory):
    """The README's cross-validation example, every command as written, in a scratch folder."""
    work = tmp_path_factory.mktemp("cv")
    outs = [emotune(*cmd[1:], cwd=work, timeout=900).stdout for cmd in commands(code_blocks("Cross-validated sweeps")[0])]
    return work, outs


def _index(work: Path) -> Path:
    return work / "cvcache" / "index.json"


# --------------------------------------------------------------------------------------------------------------------
# The plan

def test_folds_cover_every_non_test_subject_once_and_never_a_test_subject(readme_cv):
    work, _ = readme_cv
    index = json.loads(_index(work).read_text())
    non_test = sorted({v["subject"] for v in index["videos"] if v["split"] != "test"})
    test = {v["subject"] for v in index["videos"] if v["split"] == "test"}
    plan = plan_folds(_index(work), 3, seed=0)
    assert plan.k == 3 and sorted(s for f in plan.folds for s in f) == non_test
    assert not test & {s for f in plan.folds for s in f}
    assert sorted(len(f) for f in plan.folds) == [1, 2, 2]  # 5 non-test subjects: sizes differ by at most one
    assert plan_folds(_index(work), 3, seed=0) == plan  # the same folds every time
    train, val = fold_split(_index(work), plan, 2)
    assert {v.subject for v in val} == set(plan.folds[1])
    assert {v.subject for v in train} == set(non_test) - set(plan.folds[1])
    assert FoldPlan.from_config(json.loads(json.dumps(plan.to_config()))) == plan


def _with_folds(work: Path, tmp_path: Path, folds: dict[str, int]) -> Path:
    """A copy of the README's index whose videos carry the given folds (by subject), as a manifest fold column
    prepared would give them."""
    index = json.loads(_index(work).read_text())
    index["cache_root"] = str((work / "cvcache").resolve())
    for v in index["videos"]:
        if v["subject"] in folds:
            v["fold"] = folds[v["subject"]]
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    return path


def test_a_manifest_fold_column_overrides_the_assignment(readme_cv, tmp_path):
    work, _ = readme_cv
    index = json.loads(_index(work).read_text())
    subjects = sorted({v["subject"] for v in index["videos"] if v["split"] != "test"})
    given = {s: 1 + i % 2 for i, s in enumerate(subjects)}
    plan = plan_folds(_with_folds(work, tmp_path, given), 2)
    assert plan.source == "manifest fold column"
    assert plan.folds == (tuple(s for s in subjects if given[s] == 1), tuple(s for s in subjects if given[s] == 2))


@pytest.mark.parametrize("k, words", [(1, "at least 2 folds; got 1"), (0, "at least 2 folds; got 0"),
                                      (6, "6 folds need at least 6 non-test subjects; the dataset index")])
def test_impossible_fold_counts_are_refused_with_the_counts(readme_cv, k, words):
    work, _ = readme_cv
    with pytest.raises(UserError, match=words) as err:
        plan_folds(_index(work), k)
    if k == 6:
        assert "has 5 (train and val; 1 test subject(s) are never used)" in str(err.value)


def test_manifest_folds_that_do_not_fit_are_refused(readme_cv, tmp_path):
    work, _ = readme_cv
    index = json.loads(_index(work).read_text())
    subjects = sorted({v["subject"] for v in index["videos"] if v["split"] != "test"})
    with pytest.raises(UserError, match=r"empty for 1 of 5 non-test videos"):
        plan_folds(_with_folds(work, tmp_path, {s: 1 + i % 2 for i, s in enumerate(subjects[:-1])}), 2)
    with pytest.raises(UserError, match=r"holds folds 1, 2 but the sweep asks for 3 folds"):
        plan_folds(_with_folds(work, tmp_path, {s: 1 + i % 2 for i, s in enumerate(subjects)}), 3)


def test_a_subject_in_two_folds_is_refused_in_the_index_and_in_the_manifest(readme_cv, tmp_path):
    work, _ = readme_cv
    index = json.loads(_index(work).read_text())
    index["cache_root"] = str((work / "cvcache").resolve())
    first = next(v for v in index["videos"] if v["split"] != "test")
    twin = dict(first, video_id=first["video_id"] + "_twin", fold=2)
    for i, v in enumerate(v for v in index["videos"] if v["split"] != "test"):
        v["fold"] = 1 + i % 2
    first["fold"] = 1
    index["videos"].append(twin)
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=rf"puts 1 subject\(s\) in two or more folds \(subject '{first['subject']}' "
                                        r"in folds 1, 2\)"):
        plan_folds(tmp_path / "index.json", 2)
    # The manifest itself: a subject's second video in another fold.
    data = work / "cvdata"
    rows = (data / "manifest.csv").read_text().splitlines()
    header, body = rows[0] + ",fold", rows[1:]
    body = [f"{row},{1 + i % 2}" for i, row in enumerate(body)]
    twin_row = body[0].replace(body[0].split(",")[0] + ",", body[0].split(",")[0] + "_twin,", 1)
    twin_row = twin_row.rsplit(",", 1)[0] + ",2"
    (data / "folds.csv").write_text("\n".join([header, *body, twin_row]) + "\n")
    try:
        with pytest.raises(ManifestError, match=r"line 8 .*is in fold 2 and also in fold 1"):
            read_manifest(data / "folds.csv")
        (data / "folds.csv").write_text("\n".join([header, *body[:-1], body[-1].rsplit(",", 1)[0] + ",x"]) + "\n")
        with pytest.raises(ManifestError, match=r"fold 'x' is not allowed; allowed: a whole number >= 1"):
            read_manifest(data / "folds.csv")
    finally:
        (data / "folds.csv").unlink()


def test_a_fold_without_a_valid_face_frame_is_refused(readme_cv, tmp_path):
    work, _ = readme_cv
    cache = tmp_path / "cache"
    shutil.copytree(work / "cvcache", cache)
    plan = plan_folds(cache / "index.json", 3)
    index = json.loads((cache / "index.json").read_text())
    index["cache_root"] = str(cache)
    (cache / "index.json").write_text(json.dumps(index))
    for v in index["videos"]:
        if v["subject"] in plan.folds[2]:
            valid = cache / v["entry"] / "valid.npy"
            np.save(valid, np.zeros_like(np.load(valid)))
    with pytest.raises(UserError, match=r"fold 3 of 3 \(subjects .*\) has no valid face frame in its \d video"):
        plan_folds(cache / "index.json", 3)


# --------------------------------------------------------------------------------------------------------------------
# The study key

def test_the_cv_key_and_a_base_study(tmp_path):
    space = load_space("svfap_tpsbt_cv")
    base = load_space("svfap_tpsbt")
    assert space.cv == {"folds": 5, "seed": 0} and base.cv == {}
    assert (space.params, space.fixed, space.fidelity) == (base.params, base.fixed, base.fidelity)
    assert load_space("sequence_windows_cv").params == load_space("sequence_windows").params
    bad = {"cv: {folds: 1}": r"cv.folds is 1; allowed: an integer >= 2",
           "cv: {folds: 3, fold: 2}": r"unknown key\(s\) \['fold'\] in cv",
           "cv: {folds: 3}\nfidelity: {attr: data_fraction, max: 8}": r"cv: cross-validation needs fidelity.attr epoch",
           "base: nowhere": r"'nowhere' is neither a file nor a shipped study",
           "base: me.yaml": r"leads back to this study"}
    for text, words in bad.items():
        (tmp_path / "me.yaml").write_text("name: me\n" + text + "\n")
        with pytest.raises(SpaceError, match=words):
            load_space(tmp_path / "me.yaml")


@pytest.mark.parametrize("args, words", [
    (("--folds", "9"), "9 folds need at least 9 non-test subjects; the dataset index"),
    (("--folds", "1"), "--folds must be >= 2"),
    (("--folds", "3", "--space", "smoke_cost"),
     "--folds: cross-validation and several objectives do not go together yet; cross-validate a single objective "
     "(study smoke_cost)"),
])
def test_bad_fold_counts_on_the_command_line_are_one_line_exit_2(readme_cv, args, words):
    work, _ = readme_cv
    proc = run_cli("sweep", "--space", "smoke", "--data", str(_index(work)), "--dry-run", *args, cwd=work)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotune: error: ") and words in lines[0], proc.stderr


# --------------------------------------------------------------------------------------------------------------------
# The README's CV sweep, checked against its own records

def _store(work: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("emotune.kind") == "sweep")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    folds = {t.info.run_id: sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == t.info.run_id),
                                   key=lambda r: int(r.data.tags["emotune.fold"])) for t in trials}
    return client, parent, trials, folds


def _ccc(y: np.ndarray, p: np.ndarray) -> float:
    """Lin's CCC, written out (population moments), over the finite targets."""
    keep = np.isfinite(y)
    y, p = y[keep].astype(np.float64), p[keep].astype(np.float64)
    cov = np.mean((y - y.mean()) * (p - p.mean()))
    return 2 * cov / (y.var() + p.var() + (y.mean() - p.mean()) ** 2)


def test_the_readme_cv_sweep_records_three_levels_with_the_plan(readme_cv):
    work, outs = readme_cv
    assert "cross-validation: 3 subject folds (kfold seed=0)" in outs[-1]
    client, parent, trials, folds = _store(work)
    plan = plan_folds(_index(work), 3)
    assert parent.data.tags["emotune.cv_folds"] == "3"
    with open(client.download_artifacts(parent.info.run_id, "folds.json", str(work))) as fh:
        assert FoldPlan.from_config(json.load(fh)) == plan
    assert len(trials) == 4
    for trial in trials:  # every trial measures its costs (trainables.costs)
        assert {"params_m", "gflops", "infer_ms", "train_s", "peak_mem_mb"} <= set(trial.data.metrics)
        assert trial.data.metrics["gflops"] > 0 and trial.data.metrics["params_m"] > 0
    for trial in trials:
        runs = folds[trial.info.run_id]
        done = int(trial.data.tags["emotune.folds_done"])
        assert len(runs) >= 1 and [int(r.data.tags["emotune.fold"]) for r in runs] == list(range(1, len(runs) + 1))
        assert [r.data.tags["emotune.fold_subjects"].split(",") for r in runs] == [list(f) for f in plan.folds[:len(runs)]]
        finished = [r for r in runs if "fold_score" in r.data.metrics]
        assert len(finished) == done
        for r in finished:  # a finished fold: one value per epoch (2), its score the best of them
            curve = client.get_metric_history(r.info.run_id, "val_ccc_mean")
            assert sorted(m.step for m in curve) == [1, 2]
            assert r.data.metrics["fold_score"] == pytest.approx(max(m.value for m in curve), abs=1e-12)
        if done == 3:
            scores = [r.data.metrics["fold_score"] for r in finished]
            assert trial.data.metrics["cv_mean"] == pytest.approx(np.mean(scores), abs=1e-9)
            assert trial.data.metrics["cv_sd"] == pytest.approx(statistics.stdev(scores), abs=1e-9)
            assert trial.data.metrics["best_val_ccc_mean"] == pytest.approx(np.mean(scores), abs=1e-9)
        else:
            assert "cv_mean" not in trial.data.metrics and "best_val_ccc_mean" not in trial.data.metrics


def test_the_best_trial_is_the_best_complete_mean_and_its_pooled_ccc_is_the_out_of_fold_ccc(readme_cv):
    import torch

    work, _ = readme_cv
    client, parent, trials, folds = _store(work)
    complete = [t for t in trials if t.data.tags["emotune.folds_done"] == "3"]
    assert complete
    best = max(complete, key=lambda t: t.data.metrics["cv_mean"])
    assert parent.data.tags["emotune.best_run_id"] == best.info.run_id
    # The pooled figure from the trial's last checkpoint: every fold's best-epoch predictions, concatenated.
    state_path = client.download_artifacts(best.info.run_id, "checkpoint/state.pt", str(work))
    record = torch.load(state_path, weights_only=True)["cv"]
    videos = sorted(record["oof_post"])
    index = json.loads(_index(work).read_text())
    assert set(videos) == {v["video_id"] for v in index["videos"] if v["split"] != "test"}
    truth = np.concatenate([record["oof_true"][v].numpy() for v in videos])
    pred = np.concatenate([record["oof_post"][v].numpy() for v in videos])
    pooled = np.mean([_ccc(truth[:, d], pred[:, d]) for d in range(truth.shape[1])])
    assert best.data.metrics["cv_pooled_val_ccc_mean"] == pytest.approx(pooled, abs=1e-6)
    assert record["scores"] == pytest.approx([r.data.metrics["fold_score"] for r in folds[best.info.run_id]])


# --------------------------------------------------------------------------------------------------------------------
# Resume

RESUME_SPACE = """
name: cvr
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 3, grace: 3, reduction_factor: 2}
fixed: {backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, batch_size: 8, seed: 0,
        rnn_hidden: 16, window_overlap: 0.9, ssts_stride: 4, postprocess: false}
params:
  lr: {type: categorical, choices: [0.001, 0.002]}
"""


@pytest.mark.slow
def test_a_cv_sweep_killed_mid_fold_and_resumed_trains_no_finished_fold_again(readme_cv, tmp_path):
    from tests.processes import end, start_sweep, wait_for_line

    work, _ = readme_cv
    (tmp_path / "cvr.yaml").write_text(RESUME_SPACE)
    proc = start_sweep(["sweep", "--space", "cvr.yaml", "--data", str(_index(work)), "--folds", "3", "--trials", "2",
                        "--max-concurrent", "1", "--name", "cvr"], cwd=tmp_path)
    try:
        wait_for_line(proc, r"fold 2 epoch 1: ")
        time.sleep(3)  # past Tune's next experiment snapshot (every second)
    finally:
        end(proc)  # the driver and the Ray it started, as a crash would
    resumed = emotune("sweep", "--resume", "cvr", cwd=tmp_path, timeout=900)
    assert "Leaderboard of sweep cvr" in resumed.stdout
    # The trial that ran first (the one killed): by its first epoch's start, not by its folder's ctime, which moves
    # whenever a checkpoint in it is written or deleted (after the resume, while the other trial runs).
    runs = [[json.loads(line) for line in (d / "result.json").open()]
            for d in (tmp_path / "ray_results" / "cvr").glob("trial-*")]
    reports = min(runs, key=lambda r: r[0]["unit_started_at"])
    pairs = [(r["fold"], r["fold_epoch"]) for r in reports]
    assert sorted(set(pairs)) == [(f, e) for f in (1, 2, 3) for e in (1, 2, 3)]
    assert [p for p in pairs if p[0] == 1] == [(1, 1), (1, 2), (1, 3)]  # fold 1, finished before the kill: once
    assert len({r["pid"] for r in reports}) == 2  # a new trial process after the resume
    client, parent, trials, folds = _store(tmp_path)
    assert parent.info.status == "FINISHED" and len(trials) == 2
    for runs in folds.values():  # one run per fold, never a second one for a fold resumed
        assert [r.data.tags["emotune.fold"] for r in runs] == [str(i) for i in range(1, len(runs) + 1)]
