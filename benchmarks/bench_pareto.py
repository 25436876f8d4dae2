"""Accuracy against cost, searched: how fast each search reaches a good front of validation CCC against GFLOPs.

    python benchmarks/bench_pareto.py [--work DIR] [--quick]

1. **The grid**: tiny backbone families (``cnn_rnn_tiny``, ``video_vit_tiny``, ``conv3d_resnet_gru_tiny``) x frames per
   clip (8, 16) x SSTS stride (1, 2) x window overlap (0.25, 0.75) (24 configurations, learning rate 3e-3) on a small
   synthetic dataset (6 subjects of 200 frames): every configuration for every epoch, through the platform's ``run_sweep`` (the grid as initial points, no
   early stopping: ``grace = max``), run once and cached under ``--work``. Each trial's reports give its CCC per epoch
   and its measured GFLOPs per window (``trainables.costs``).
2. **Four arms**, 3 seeds, 16 trials each, replayed through the platform's searcher (``cluster.sweep.make_searcher``:
   TPE over both objectives, or Optuna's random sampler) and scheduler (``cluster.racing.make_scheduler``: ASHA whose
   rungs promote by non-dominated sorting, or none) in a real Ray Tune run, one trial at a time, each trial reporting
   its configuration's cached results (CPU training is deterministic, SPEC evaluation rule 4). The scheduler runs at
   the study's default grace, which for several objectives is the reduction factor (2: one rung, at epoch 2;
   ``search_spaces.schema.multi_objective_grace`` says why); ``--grace 1`` replays ASHA's earliest rung too. The
   trials are replayed in the order Tune started them (Tune's trial ids are random, not a count).
3. **Hypervolume** of the front of finished trials (CCC at the last epoch, max; GFLOPs, min) against the reference point
   (CCC 0, 1.1 x the grid's largest GFLOPs), after every trial-epoch spent.

Goal: TPE with the scheduler reaches random-without-scheduler's final hypervolume in at most half its trial-epochs on
the mean of 3 seeds. The plot (``pareto_search.png`` in ``--work``) shows hypervolume against trial-epochs per arm.
Inference milliseconds are measured by every trial too, but are too noisy on shared CPU cores to be an objective here.

``--quick``: a smaller grid and 2 epochs (a smoke run of the script). ``--seeds 3 4 5``: other seeds than the goal's,
to check that a change holds beyond the seeds it is judged on. Not part of the test run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
for path in (ROOT, SCRIPT.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_cv import run_live  # noqa: E402  (one child-process sweep runner for the benchmarks)

FULL = {"epochs": 4, "trials": 16, "data": dict(subjects=6, frames=200),
        "grid": {"backbone": ["cnn_rnn_tiny", "video_vit_tiny", "conv3d_resnet_gru_tiny"], "clip_len": [8, 16],
                 "ssts_stride": [1, 2], "window_overlap": [0.25, 0.75], "lr": [3.0e-3]}}
QUICK = {"epochs": 2, "trials": 6, "data": dict(subjects=3, frames=100),
         "grid": {"backbone": ["cnn_rnn_tiny", "video_vit_tiny"], "clip_len": [8, 16], "ssts_stride": [1, 2],
                  "window_overlap": [0.5], "lr": [3.0e-3]}}
FIXED = {"window_length": 32, "sampler": "ssts", "batch_size": 8, "w_ccc": 1.0, "seed": 0, "postprocess": False}
OBJECTIVES = {"val_ccc_mean": "max", "gflops": "min"}
SEEDS = (0, 1, 2)
ARMS = (("TPE + scheduler", "tpe", True), ("TPE", "tpe", False), ("random + scheduler", "random", True),
        ("random", "random", False))


def build_data(work: Path, setup: dict) -> Path:
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize

    index = work / "index.json"
    if not index.is_file():
        manifest = synthesize(work / "data", subjects=setup["data"]["subjects"], videos_per_subject=1,
                              frames=setup["data"]["frames"], size=64, seed=0, progress=False)
        prepare(manifest, work / "cache", Registration(size=32), workers=2, progress=False, index_path=index)
    return index


def write_study(path: Path, setup: dict, grid: bool) -> None:
    import yaml

    study = {"name": path.stem, "description": "bench_pareto: tiny backbones x frames x stride x overlap x lr",
             "objectives": OBJECTIVES,
             "fidelity": {"attr": "epoch", "max": setup["epochs"], "reduction_factor": setup.get("reduction_factor", 2),
                          # the grid: no early stopping; the replays: the study's default grace unless --grace
                          **({"grace": setup["epochs"]} if grid else {"grace": setup["grace"]} if "grace" in setup
                             else {})},
             "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "fixed": FIXED,
             "params": {k: {"type": "categorical", "choices": v} for k, v in setup["grid"].items()}}
    if grid:
        study["initial_points"] = [dict(zip(setup["grid"], c)) for c in itertools.product(*setup["grid"].values())]
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def config_key(config: dict, setup: dict) -> str:
    return json.dumps([config[k] for k in setup["grid"]])


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (CCC to maximise, GFLOPs to minimise) and bounded by ``reference`` (CCC, GFLOPs)."""
    from analysis.pareto import hypervolume as minimised_hypervolume

    return minimised_hypervolume([(-c, g) for c, g in points], (-reference[0], reference[1])) if points else 0.0


def replay_trial(config: dict) -> None:
    """A Tune trial reporting its configuration's cached CCC per epoch and its GFLOPs."""
    from ray import tune

    rows = json.loads(Path(config["table"]).read_text())[config_key(config, config["setup"])]
    for epoch, ccc in enumerate(rows["ccc"], 1):
        tune.report({"epoch": epoch, "val_ccc_mean": ccc, "gflops": rows["gflops"]})


def replay(work: Path, setup: dict, table: Path, seed: int, sampler: str, stopping: bool) -> list[list[dict]]:
    """One replayed sweep; every trial's reports, in the order the trials ran."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from cluster.racing import make_scheduler
    from cluster.sweep import SweepOptions, make_searcher
    from cluster.tuner import build_tuner
    from search_spaces.schema import load_space

    study = work / "replay.yaml"
    write_study(study, setup, grid=False)
    space = load_space(study)
    if sampler == "random":
        import dataclasses

        space = dataclasses.replace(space, sampler="random")
    name = f"replay-{sampler}-{'stop' if stopping else 'all'}-{seed}-g{setup.get('grace', 'default')}"
    order = start_order()
    searcher = make_searcher(space, SweepOptions(seed=seed, num_samples=setup["trials"]), name, 1,
                             {"setup": setup, "table": str(table)}, storage=None,
                             progress=("epoch", setup["epochs"]))
    tuner = build_tuner(name=name, storage=str(work / "replays"), search_alg=searcher,
                        runtime={"metric": "val_ccc_mean", "mode": "max", "executor": "inline", "max_failures": 0},
                        num_samples=setup["trials"], concurrent=1, callbacks=[order],
                        scheduler=make_scheduler(space, "epoch", setup["epochs"]) if stopping else FIFOScheduler(),
                        function=tune.with_resources(replay_trial, {"cpu": 1}))
    grid = tuner.fit()
    # Tune's trial ids are random hex (uuid4), so sorting by them shuffles the trials: the order they started in is
    # what the curve of hypervolume against trial-epochs spent needs (one trial at a time: the order they ran).
    started = {trial_id: i for i, trial_id in enumerate(order.started)}
    trials = sorted(grid, key=lambda r: started[r.metrics["trial_id"]])
    (work / "replays" / name / "order.json").write_text(json.dumps(order.started))
    return [r.metrics_dataframe.to_dict("records") for r in trials]


def start_order():
    """A Tune callback that keeps the ids of the trials in the order Tune started them (``.started``)."""
    from ray.tune import Callback

    class _StartOrder(Callback):
        def __init__(self):
            self.started: list[str] = []

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.append(trial.trial_id)

    return _StartOrder()


def curve(trials: list[list[dict]], epochs: int, reference) -> list[tuple[int, float]]:
    """(trial-epochs spent, hypervolume of the finished trials' front) after each trial."""
    spent, finished, out = 0, [], []
    for reports in trials:
        spent += len(reports)
        if len(reports) == epochs:
            finished.append((reports[-1]["val_ccc_mean"], reports[-1]["gflops"]))
        out.append((spent, hypervolume(finished, reference)))
    return out


def spent_to_reach(points: list[tuple[int, float]], level: float) -> float:
    return next((spent for spent, hv in points if hv >= level - 1e-12), float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="folder for the data, the grid and the replays (reused when "
                                                     "given again; default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a smaller grid, 2 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="the seeds of every arm (default: 0 1 2, the goal's); others check that a change to the "
                             "scheduler holds beyond the seeds it is judged on")
    parser.add_argument("--grace", type=int, default=None,
                        help="the study's fidelity grace for the arms with the scheduler (default: the study's "
                             "default, search_spaces.schema)")
    args = parser.parse_args()
    setup = dict(QUICK if args.quick else FULL)
    if args.grace is not None:
        setup["grace"] = args.grace
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench-pareto-")
    work = Path(args.work or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    index = build_data(work, setup)
    n = len(list(itertools.product(*setup["grid"].values())))
    write_study(work / "grid.yaml", setup, grid=True)
    reports = run_live(work, "grid", study=str(work / "grid.yaml"), index=str(index), trials=n, seed=0, folds=None,
                       concurrent=2, full=False)
    table: dict[str, dict] = {}
    for r in sorted(reports, key=lambda r: r["epoch"]):
        row = table.setdefault(config_key(r["config"], setup), {"ccc": [], "gflops": r["gflops"]})
        row["ccc"].append(r["val_ccc_mean"])
    (work / "table.json").write_text(json.dumps(table))
    reference = (0.0, 1.1 * max(row["gflops"] for row in table.values()))
    grid_hv = hypervolume([(row["ccc"][-1], row["gflops"]) for row in table.values()], reference)
    print(f"grid: {n} configurations x {setup['epochs']} epochs; its front's hypervolume {grid_hv:.4f} against "
          f"(CCC {reference[0]}, {reference[1]:.4f} GFLOPs)", flush=True)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    curves = {label: [curve(replay(work, setup, work / "table.json", seed, sampler, stopping), setup["epochs"],
                            reference) for seed in args.seeds] for label, sampler, stopping in ARMS}
    ray.shutdown()

    target = statistics.fmean(c[-1][1] for c in curves["random"])
    print(f"\n{'arm':<22}{'final hypervolume (mean)':>26}{'trial-epochs (mean)':>21}"
          f"{'to random final (mean)':>24}")
    reach = {}
    for label, runs in curves.items():
        # A seed that never reaches the target makes the mean infinite: the arm did not reach it.
        spent = [spent_to_reach(c, target) for c in runs]
        reached = sum(x < float("inf") for x in spent)
        reach[label] = statistics.fmean(spent)
        print(f"{label:<22}{statistics.fmean(c[-1][1] for c in runs):>26.4f}"
              f"{statistics.fmean(c[-1][0] for c in runs):>21.1f}{reach[label]:>17.1f} ({reached}/{len(runs)})  "
              f"per seed: {', '.join('-' if x == float('inf') else f'{x:.0f}' for x in spent)}")
    budget = statistics.fmean(c[-1][0] for c in curves["random"])
    print(f"\ngoal: TPE + scheduler reaches random's final hypervolume ({target:.4f}) in at most half random's "
          f"trial-epochs ({budget / 2:.1f}): {reach['TPE + scheduler']:.1f}: "
          f"{'met' if reach['TPE + scheduler'] <= budget / 2 else 'NOT met'}")
    plot(curves, work / "pareto_search.png")
    print(f"plot: {work / 'pareto_search.png'}; load after: {os.getloadavg()[0]:.2f}; "
          f"{time.time() - started:.0f} s in all")
    if tmp is not None:
        tmp.cleanup()


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, runs), colour in zip(curves.items(), ("C0", "C1", "C2", "C3")):
        for i, c in enumerate(runs):
            ax.step([0] + [s for s, _ in c], [0] + [h for _, h in c], where="post", color=colour, alpha=0.7,
                    label=label if i == 0 else None)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("hypervolume (CCC x GFLOPs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
