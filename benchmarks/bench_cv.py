"""Cross-validated search at a fraction of its cost: how many fold-epochs racing (the CV sweep's scheduler) needs to
find a configuration as good as full cross-validation's best, against what a user does without CV.

    python benchmarks/bench_cv.py [--work DIR] [--quick]

1. **Data**: 12 synthetic subjects (one 300-frame video each) in three groups of four, each group rendered with its own
   annotator lag (2, 8 and 14 frames) and seed, every subject with its own appearance: subjects differ in more than
   one global lag, so which subjects validate decides how good a window setting looks. Two subjects are test (never
   used), ten take part in 5 subject folds of two subjects each.
2. **Full CV**: a finite study of 24 configurations of ``cnn_rnn_tiny`` (window length x overlap x label fusion x
   learning rate) at small size, every configuration on every fold for every epoch (the platform's ``run_sweep`` with
   ``--folds 5``, the grid as initial points, and no early stopping: the one patch of this script), run once and cached
   under ``--work``. Its best CV mean minus 0.01 is the **target**.
3. **Replays**, 3 seeds each, through the real searcher (``cluster.sweep.make_searcher``: Optuna TPE, or Optuna's
   random sampler) and the real scheduler (``cluster.racing.make_scheduler``) in a real Ray Tune run, one trial at a
   time, each trial reporting the cached per-fold-epoch results of its configuration (CPU training is deterministic,
   SPEC evaluation rule 4; the live run below checks it):
   - racing + TPE, racing + random: CV sweeps of 16 trials;
   - TPE + ASHA on fold 1 only (what a user does today: one validation split, here fold 1's subjects), 16 trials.
4. **Live**: one real racing + TPE CV sweep (seed 0, one trial at a time, its first 4 trials: a live trial costs
   minutes on 2 cores): every value it reports is checked against the cached table.

Per run: the fold-epochs spent until a trial with a complete K-fold mean at or above the target finished (racing), as
a share of full CV's fold-epochs; the configuration it would promote (the best complete trial; fold-1-only: the best
fold-1 value) and whether its full-CV mean is within 0.01 of full CV's best. Goal: racing + TPE reaches the target in
at most 25% of full CV's fold-epochs on every seed, and fold-1-only ASHA promotes a configuration outside 0.01 of full
CV's best on at least one seed where racing does not.

``--quick``: 8 configurations, 3 folds, 2 epochs (a smoke run of the script). Not part of the test run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = {"lags": (2, 8, 14), "subjects_per_group": 4, "frames": 300, "folds": 5, "epochs": 4, "trials": 16,
        "live_trials": 4,
        "variant": "per_frame",
        "grid": {"window_length": [16, 32, 64], "window_overlap": [0.25, 0.75], "label_fusion": ["mean", "extremum"],
                 "lr": [1.0e-3, 3.0e-3]}}
QUICK = {"lags": (2, 8, 14), "subjects_per_group": 2, "frames": 120, "folds": 3, "epochs": 2, "trials": 6,
        "live_trials": 3,
         "variant": "per_frame",
         "grid": {"window_length": [16, 32], "window_overlap": [0.25, 0.75], "label_fusion": ["mean"],
                  "lr": [3.0e-4, 3.0e-3]}}
FIXED = {"backbone": "cnn_rnn_tiny", "rnn_hidden": 32, "sampler": "uniform", "num_frames": 8, "batch_size": 16,
         "weight_decay": 1.0e-4, "w_ccc": 1.0, "w_mse": 0.0, "seed": 0, "postprocess": False}
METRIC = "val_ccc_mean"
TOLERANCE = 0.01
SEEDS = (0, 1, 2)


# --------------------------------------------------------------------------------------------------------------------
def build_data(work: Path, setup: dict) -> Path:
    """Three groups of synthetic subjects with their own lag and seed, merged into one manifest (subject ids prefixed
    by group), two test and two val subjects, prepared once; returns the dataset index."""
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.splits import write_manifest
    from trainables.prepare.synth import synthesize

    index = work / "index.json"
    if index.is_file():
        return index
    rows = []
    for g, lag in enumerate(setup["lags"]):
        manifest = synthesize(work / f"group{g}", subjects=max(3, setup["subjects_per_group"]), videos_per_subject=1,
                              frames=setup["frames"], size=64, lag_frames=lag, blank_rate=0.04,
                              variant=setup["variant"], seed=100 + g, progress=False)
        with open(manifest, newline="") as fh:
            for row in list(csv.DictReader(fh))[: setup["subjects_per_group"]]:
                rows.append({"video_id": f"g{g}{row['video_id']}", "subject": f"g{g}{row['subject']}",
                             "path": manifest.parent / row["path"], "labels": manifest.parent / row["labels"],
                             "faces": manifest.parent / row["faces"], "split": "train"})
    for i, row in enumerate(rows):  # test: the first subject of groups 0 and 1; val: of group 2 and the second one
        row["split"] = "test" if i in (0, setup["subjects_per_group"]) else \
            "val" if i in (2 * setup["subjects_per_group"], 1) else "train"
    manifest = write_manifest(rows, work / "manifest.csv")
    _, summary = prepare(manifest, work / "cache", Registration(size=32), workers=2, progress=False, index_path=index)
    for line in summary.lines():
        print(f"  {line}")
    return index


def write_study(path: Path, setup: dict, points: bool) -> None:
    study = {"name": path.stem, "description": "bench_cv: windows x fusion x lr on cnn_rnn_tiny",
             "objective": {"metric": METRIC, "mode": "max"},
             "fidelity": {"attr": "epoch", "max": setup["epochs"], "grace": 1, "reduction_factor": 2},
             "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
             "fixed": FIXED, "params": {k: {"type": "categorical", "choices": v} for k, v in setup["grid"].items()},
             "constraints": ["window_length >= num_frames"]}
    if points:
        study["initial_points"] = [dict(zip(setup["grid"], c)) for c in itertools.product(*setup["grid"].values())]
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def config_key(config: dict, setup: dict) -> str:
    return json.dumps([config[k] for k in setup["grid"]])


# --------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_early_stopping():
    """THE patch of the full-CV run: its scheduler lets every trial finish every fold (Tune's FIFO)."""
    import cluster.racing
    from ray.tune.schedulers import FIFOScheduler

    # run_sweep imports ``make_scheduler`` from ``cluster.racing`` when it runs: patch it there
    owner, attr = cluster.racing, "make_scheduler"
    original = getattr(owner, attr)
    setattr(owner, attr, lambda *args, **kwargs: FIFOScheduler())
    try:
        yield
    finally:
        setattr(owner, attr, original)


def live_sweep(job: dict) -> None:
    """A child process: one real CV sweep (full CV without early stopping, or the live racing run)."""
    from cluster.sweep import SweepOptions, run_sweep

    work = Path(job["work"])
    os.chdir(work)
    opts = SweepOptions(space=job["study"], data_index=job["index"], num_samples=job["trials"],
                        max_concurrent=job["concurrent"], cpus_per_worker=1, gpus_per_worker=0,
                        storage=str(work / "ray_results"), name=job["name"], seed=job["seed"], folds=job["folds"],
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="bench-cv",
                        artifact_root=str(work / "mlartifacts"), optuna_storage=f"sqlite:///{work / 'optuna.db'}",
                        executor="inline", release_ray=True)
    with no_early_stopping() if job["full"] else contextlib.nullcontext():
        outcome = run_sweep(opts)
    errors = [r for r in outcome.results if r.error is not None]
    sys.exit(3 if errors else 0)


def run_live(work: Path, name: str, **job) -> list[dict]:
    folder = work / "ray_results" / name
    if not folder.is_dir():
        log = work / f"{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.run([sys.executable, str(SCRIPT), "--child", json.dumps({"work": str(work), "name": name,
                                                                                      **job})],
                                  stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode:
            sys.exit(f"sweep {name} failed (exit {proc.returncode}); see {log}")
    reports = []
    for path in folder.glob("trial-*/result.json"):
        reports += [json.loads(line) for line in path.read_text().splitlines()]
    return reports


def full_table(reports: list[dict], setup: dict) -> dict[str, list[list[float]]]:
    """config -> [fold][epoch] -> the fold's validation objective that epoch."""
    table: dict[str, list[list[float]]] = {}
    for r in reports:
        rows = table.setdefault(config_key(r["config"], setup),
                                [[float("nan")] * setup["epochs"] for _ in range(setup["folds"])])
        rows[r["fold"] - 1][r["fold_epoch"] - 1] = r[f"fold_{METRIC}"]
    return table


# --------------------------------------------------------------------------------------------------------------------
def replay_trial(config: dict) -> None:
    """A Tune trial that reports its configuration's cached results with the CV trial's keys
    (``trainables.crossval``): per fold-epoch the fold's value, the fold's best, the mean over folds so far."""
    from ray import tune

    setup = config["setup"]
    rows = json.loads(Path(config["table"]).read_text())[config_key(config, setup)]
    folds, epochs = (setup["folds"], setup["epochs"]) if config["cv"] else (1, setup["epochs"])
    scores: list[float] = []
    for fold in range(1, folds + 1):
        best = None
        for epoch in range(1, epochs + 1):
            value = rows[fold - 1][epoch - 1]
            best = value if best is None else max(best, value)
            report = {"fold": fold, "fold_epoch": epoch, "fold_epochs": (fold - 1) * epochs + epoch, "epoch": epoch,
                      "folds_done": fold - 1 + (epoch == epochs), "fold_best": best,
                      f"fold_{METRIC}": value}
            if epoch == epochs:
                scores.append(best)
            so_far = scores + ([] if epoch == epochs else [best])
            report[METRIC] = report["cv_mean_so_far"] = statistics.fmean(so_far) if config["cv"] else value
            if config["cv"] and len(scores) == folds:
                report["cv_mean"] = statistics.fmean(scores)
            tune.report(report)


def replay(work: Path, setup: dict, table_path: Path, seed: int, sampler: str, cv: bool) -> list[dict]:
    """One replayed sweep: the platform's searcher and scheduler in a real Tune run; the reports in order."""
    from ray import tune

    from cluster.racing import make_scheduler
    from cluster.sweep import SweepOptions, make_searcher
    from cluster.tuner import build_tuner
    from search_spaces.schema import load_space

    study = work / "replay.yaml"
    write_study(study, setup, points=False)
    space = load_space(study)
    folds = setup["folds"] if cv else 0
    time_attr, units = ("fold_epochs", setup["folds"] * setup["epochs"]) if cv else ("epoch", setup["epochs"])
    constants = {"setup": setup, "table": str(table_path), "cv": cv}
    if sampler == "random":  # Optuna's random sampler in place of TPE; nothing else changes
        import dataclasses

        space = dataclasses.replace(space, sampler="random")
    searcher = make_searcher(space, SweepOptions(seed=seed, num_samples=setup["trials"]),
                             f"replay-{sampler}-{cv}-{seed}", 1, constants, storage=None, progress=(time_attr, units))
    name = f"replay-{sampler}-{'racing' if cv else 'fold1'}-{seed}"
    tuner = build_tuner(name=name, storage=str(work / "replays"), search_alg=searcher,
                        runtime={"metric": METRIC, "mode": "max", "executor": "inline", "max_failures": 0},
                        num_samples=setup["trials"], concurrent=1, callbacks=[],
                        scheduler=make_scheduler(space, time_attr, units, folds),
                        function=tune.with_resources(replay_trial, {"cpu": 1}))
    grid = tuner.fit()
    trials = sorted(grid, key=lambda r: r.metrics["trial_id"].split("_")[-1])
    return [{"config": config_key(r.config, setup), "reports": r.metrics_dataframe.to_dict("records")}
            for r in trials]


def score_run(trials: list[dict], cv_means: dict[str, float], setup: dict, cv: bool) -> dict:
    """Fold-epochs until the first complete trial at the target (trials ran one at a time, in this order) and the
    configuration the run would promote."""
    best_cv = max(cv_means.values())
    spent, reached = 0, None
    for trial in trials:
        spent += len(trial["reports"])
        last = trial["reports"][-1]
        if cv and reached is None and last.get("folds_done") == setup["folds"] and \
                last["cv_mean"] >= best_cv - TOLERANCE:
            reached = spent
    if cv:
        complete = [t for t in trials if t["reports"][-1].get("folds_done") == setup["folds"]]
        pick = max(complete, key=lambda t: t["reports"][-1]["cv_mean"])["config"] if complete else None
    else:
        pick = max(trials, key=lambda t: max(r[METRIC] for r in t["reports"]))["config"]
    return {"spent": spent, "reached": reached, "pick": pick,
            "within": pick is not None and cv_means[pick] >= best_cv - TOLERANCE}


# --------------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="folder for the data, the full-CV run and the replays (reused "
                                                     "when given again; default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="8 configurations, 3 folds, 2 epochs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        live_sweep(json.loads(args.child))
        return
    setup = QUICK if args.quick else FULL
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench-cv-")
    work = Path(args.work or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    index = build_data(work, setup)
    n_configs = len(list(itertools.product(*setup["grid"].values())))
    write_study(work / "full.yaml", setup, points=True)
    print(f"full CV: {n_configs} configurations x {setup['folds']} folds x {setup['epochs']} epochs", flush=True)
    t0 = time.time()
    full = run_live(work, "full", study=str(work / "full.yaml"), index=str(index), trials=n_configs, seed=0,
                    folds=setup["folds"], concurrent=2, full=True)
    print(f"  {len(full)} fold-epochs in {time.time() - t0:.0f} s", flush=True)
    if len(full) != n_configs * setup["folds"] * setup["epochs"]:
        sys.exit(f"full CV is incomplete: {len(full)} fold-epochs, expected "
                 f"{n_configs * setup['folds'] * setup['epochs']} (was a trial stopped early?)")
    table = full_table(full, setup)
    table_path = work / "table.json"
    table_path.write_text(json.dumps(table))
    cv_means = {k: statistics.fmean(max(fold) for fold in rows) for k, rows in table.items()}
    best = max(cv_means.values())
    full_cost = n_configs * setup["folds"] * setup["epochs"]
    behind = sum(v < best - 0.02 for v in cv_means.values())
    print(f"  best CV mean {best:.4f} (target {best - TOLERANCE:.4f}); {behind} of {n_configs} configurations more "
          f"than 0.02 below it", flush=True)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for label, sampler, cv in (("racing + TPE", "tpe", True), ("racing + random", "random", True),
                               ("TPE + ASHA, fold 1 only", "tpe", False)):
        for seed in SEEDS:
            run = score_run(replay(work, setup, table_path, seed, sampler, cv), cv_means, setup, cv)
            rows.append((label, seed, run))
    ray.shutdown()

    write_study(work / "live.yaml", setup, points=False)
    live = run_live(work, "live", study=str(work / "live.yaml"), index=str(index), trials=setup["live_trials"], seed=0,
                    folds=setup["folds"], concurrent=1, full=False)
    mismatch = max(abs(r[f"fold_{METRIC}"] - table[config_key(r["config"], setup)][r["fold"] - 1][r["fold_epoch"] - 1])
                   for r in live)

    print(f"\n{'run':<26}{'seed':>5}{'fold-epochs':>13}{'to target':>11}{'share':>8}  promoted cv_mean  within 0.01")
    for label, seed, run in rows:
        reached = "-" if run["reached"] is None else str(run["reached"])
        share = "-" if run["reached"] is None else f"{100 * run['reached'] / full_cost:.1f}%"
        promoted = "-" if run["pick"] is None else f"{cv_means[run['pick']]:.4f}"
        print(f"{label:<26}{seed:>5}{run['spent']:>13}{reached:>11}{share:>8}  {promoted:>16}  "
              f"{'yes' if run['within'] else 'no'}")
    print(f"{'full CV':<26}{'':>5}{full_cost:>13}{'':>11}{'100%':>8}  {best:>16.4f}  yes")
    racing = [r for label, _, r in rows if label == "racing + TPE"]
    fold1 = {seed: r for label, seed, r in rows if label.startswith("TPE + ASHA")}
    goal1 = all(r["reached"] is not None and r["reached"] <= 0.25 * full_cost for r in racing)
    goal2 = any(not fold1[seed]["within"] and racing[i]["within"] for i, seed in enumerate(SEEDS))
    print(f"\nlive racing + TPE run: {len(live)} fold-epochs, largest difference from the cached table "
          f"{mismatch:.2e}")
    print(f"goal: racing + TPE reaches the target within 25% of full CV's fold-epochs on every seed: "
          f"{'met' if goal1 else 'NOT met'}")
    print(f"goal: fold-1-only ASHA promotes outside 0.01 of full CV's best on a seed where racing does not: "
          f"{'met' if goal2 else 'NOT met'}")
    print(f"load after: {os.getloadavg()[0]:.2f}; {time.time() - started:.0f} s in all")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
