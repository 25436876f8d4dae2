"""Search efficiency, measured (issue 12, item 4): how much of an exhaustive grid's compute TPE+ASHA (the platform's
default sweep) and random search + ASHA need to find a configuration as good as the grid's best.

    python benchmarks/bench_search_efficiency.py [--work DIR] [--quick]

It runs, through the real sweep machinery (``cluster.sweep.run_sweep``: Ray Tune trials, Optuna, ASHA, MLflow; each
sweep in a child process with its own local Ray, two 1-CPU trials at a time):

1. **the grid**: paper 003's window grid (``sequence_windows``: window length x overlap x label fusion x frame rate;
   gap tolerance left out) on the tiny CNN-GRU ``cnn_rnn_tiny`` -- every combination, every epoch, no early stopping;
2. **TPE + ASHA**: ``run_sweep`` exactly as ``emotune sweep`` runs it (Optuna TPE, ASHA on), seeds 0, 1, 2, a budget
   of grid size / 3 trials each;
3. **random + ASHA**: the same sweeps with Optuna's ``RandomSampler`` in place of TPE (see ``random_sampler()``, the one
   place this script changes the platform's behaviour, for the duration of those sweeps only), seeds 0, 1, 2.

How the grid is run (the simplest honest way the platform offers): the study file this script writes lists every one of
the grid's combinations in ``initial_points`` and the sweep runs ``num_samples`` = grid size trials. Optuna evaluates
initial points first, in order, so the sweep trains exactly the grid, each configuration once. The grid study's ASHA
fidelity has ``grace = max`` (ASHA has no rung before the last epoch, so it never stops a trial): every configuration
trains every epoch. The searched sweeps use the same study with ``grace 1, reduction_factor 3`` (rungs at epochs 1
and 3 of 6) and no initial points. All params are categorical with the grid's values, so every searched configuration
is one of the grid's; a configuration has the same seed everywhere, and CPU training is reproducible (SPEC, evaluation
rule 4), so a searched trial scores what the grid's run of that configuration scored at the same epoch.

Stopped trials and the rung rule. A trial ASHA stops reaches Optuna as PRUNED, its last value its last intermediate
value (``cluster.searcher``): TPE ranks it below every finished trial, by how far it got, instead of as a finished
trial worth its early value. The rungs are ASHA's at epochs 1 and 3 (grace 1, reduction factor 3): a trial whose value
is below the top third of the values recorded at its rung stops there. The grid holds a slow starter, (16, 0.5,
extremum, 25) -- 0.438 after one epoch, 0.934 after two, 0.964 after six; with the best one of the only two
configurations that reach the target. That rule keeps it: at epoch 1 a value says mostly how many optimisation steps a
configuration's first epoch holds (window length, overlap and frame rate set that), and even at 0.438 it is the 6th
best of the 36 there, so it stops at epoch 1 only when more than a third of the values recorded at that rung come from
the five configurations ahead of it: (16, 0.8, mean, 25) -- the best -- (16, 0.8, extremum, 25), (16, 0.5, mean, 25)
and (32, 0.8, either fusion, 25), i.e. once the sweep has found the best's corner of the grid. At epoch 3 it is the
3rd best (0.947). A first rung at epoch 2 (grace 2) would keep it whatever the rung holds, but every trial stopped at
epoch 1 (most of them) would pay a second epoch, which this benchmark's measure cannot afford (the target at 20% is
43 trial-epochs, for 12 trials): judgment call, not taken. The results list, for each searched run, how far it trained
each configuration that reaches the target in the grid, marking one stopped before it got there.

The dataset (built once with ``synthesize`` and prepared with the platform's own ``prepare``; cached under ``--work``)
is chosen so that the four knobs matter:

* **Longer videos** (24 s at 25 fps, 10 training and 4 validation videos): windows of 64 frames fit many times, and the number of training windows per epoch
  -- window length / overlap / fps decide it, from ~4 to ~200 per video -- really changes what a trial learns in an
  epoch. A tiny overlap (0.2) on long windows at 10 fps gives a handful of windows per video: few optimisation steps.
* **Arousal shows partly through motion** (the face moves faster the higher the arousal): reading it needs several
  frames spread over time, so window length and frame rate (how far apart the 8 sampled frames are) change how well
  arousal can be read; too long a window averages over a changing state.
* **Labels change fast** (periods of 2-8 s plus noise) **and lag the face by 10 frames** (0.4 s): a window's fused
  label and what its frames show differ more the longer the window; ``extremum`` fusion (the largest |value|) departs
  from ``mean`` exactly when the label moves inside a window, so the two fusions train towards different targets on
  long windows and nearly the same ones on short windows. Evaluation is on the label timeline (each label step the
  mean of the windows covering it), so all configurations are scored on identical targets.
* **Missing faces** (8% of frames in short runs) drop some windows' frames.

What is measured, from each sweep's own trial reports (``result.json``: one report per trial-epoch, with Tune's wall
timestamp): the **target** is the grid's best validation ``val_ccc_mean`` over all its reports minus 0.01. For each run
the reports are put in wall-clock order; the run's cost is the number of trial-epochs reported up to and including its
first report at or above the target, and the wall time from the sweep's start to that report. The grid's share is 100%
by definition (an exhaustive grid knows its best only when it has trained everything); the table also shows when the
grid itself first reached the target in its (fixed) order. The plot shows best-so-far ``val_ccc_mean`` against
cumulative trial-epochs for every run. Goal: TPE+ASHA reaches the target on every seed, each within 20% of the grid's
trial-epochs, and below random + ASHA.

``--quick``: a smoke version (a smaller dataset, a 2 x 2 x 2 x 1 grid of 3 epochs, budgets of 3 trials): about 5
minutes on 2 quiet cores (15 on a loaded shared machine); the full version takes 11 minutes on 2 quiet cores (23 on
the loaded machine).
``--work DIR --stamp STAMP`` re-runs the analysis of an earlier run in DIR, running only the sweeps it lacks;
``--grid-stamp STAMP`` takes the grid (which trains every configuration to its end whatever the search's settings)
from an earlier run in DIR and runs the searched sweeps anew under ``--stamp``.
Not part of the test run (``benchmarks/`` is outside ``testpaths``).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
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

FULL = {
    "data": dict(subjects=8, videos_per_subject=2, frames=600, size=64, lag_frames=10, blank_rate=0.08),
    "grid": {"window_length": [16, 32, 64], "window_overlap": [0.2, 0.5, 0.8], "label_fusion": ["mean", "extremum"],
             "fps": [10, 25]},
    "epochs": 6, "grace": 1, "reduction_factor": 3,
}
QUICK = {
    "data": dict(subjects=6, videos_per_subject=2, frames=300, size=64, lag_frames=10, blank_rate=0.08),
    "grid": {"window_length": [16, 32], "window_overlap": [0.5, 0.8], "label_fusion": ["mean", "extremum"],
             "fps": [25]},
    "epochs": 3, "grace": 1, "reduction_factor": 3,
}
# Everything but the grid's four knobs, the same for every trial of every run.
FIXED = {"backbone": "cnn_rnn_tiny", "rnn_hidden": 32, "sampler": "uniform", "num_frames": 8, "lr": 1.0e-3,
         "batch_size": 16, "weight_decay": 1.0e-4, "w_ccc": 1.0, "w_mse": 0.0, "seed": 0}
METRIC = "val_ccc_mean"
TOLERANCE = 0.01


def build_data(work: Path, params: dict) -> str:
    """Synthesise (once) and prepare (once: the cache is content-addressed) the dataset; returns its index path."""
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize

    tag = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    manifest = synthesize(work / f"data-{tag}", seed=0, progress=False, **params)
    index, summary = prepare(manifest, work / "cache", Registration(size=32), workers=2, progress=False,
                             index_path=work / f"index-{tag}.json")
    for line in summary.lines():
        print(f"  {line}")
    return str(index)


def write_study(path: Path, setup: dict, grid: bool, points: list[dict] | None = None) -> None:
    """The study: the grid's knobs as categorical params; for the grid run every combination as an initial point and
    ASHA without a rung before the last epoch."""
    keys = list(setup["grid"])
    study = {
        "name": path.stem,
        "description": "bench_search_efficiency: paper 003's window grid on cnn_rnn_tiny",
        "objective": {"metric": METRIC, "mode": "max"},
        "fidelity": {"attr": "epoch", "max": setup["epochs"], "grace": setup["epochs"] if grid else setup["grace"],
                     "reduction_factor": setup["reduction_factor"]},
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "fixed": FIXED,
        "params": {k: {"type": "categorical", "choices": v} for k, v in setup["grid"].items()},
        "constraints": ["window_length >= num_frames"],
    }
    if grid:
        study["initial_points"] = points or [dict(zip(keys, c)) for c in itertools.product(*setup["grid"].values())]
    path.write_text(yaml.safe_dump(study, sort_keys=False))


@contextlib.contextmanager
def random_sampler():
    """THE one patch of this benchmark: ``run_sweep`` has no sampler option, and ``cluster.sweep.make_searcher`` builds
    ``optuna.samplers.TPESampler(seed=..., n_startup_trials=...)``. For the duration of the random-search sweeps,
    that name returns ``optuna.samplers.RandomSampler(seed=seed)`` instead; everything else (OptunaSearch, its
    storage, ASHA, the trials, MLflow) is the platform's. ``calls`` counts the replacements (checked to be 1 per
    sweep)."""
    import optuna

    original = optuna.samplers.TPESampler
    calls = []

    def factory(seed=None, **_ignored):
        calls.append(seed)
        return optuna.samplers.RandomSampler(seed=seed)

    optuna.samplers.TPESampler = factory
    try:
        yield calls
    finally:
        optuna.samplers.TPESampler = original


def sweep(work: Path, study: Path, index: str, name: str, trials: int, seed: int, method: str,
          retries: int = 2) -> dict:
    """One real sweep, in a child process of its own (its own local Ray; this machine is shared, and a Ray shut
    down under a sweep by someone else's command then costs a resume, not the benchmark). The child's output (one
    line per trial event, the leaderboard) goes to ``logs/<name>.log``. A sweep whose Ray died or whose trials
    errored is resumed with ``SweepOptions(resume=name)`` (finished trials kept, unfinished ones continue from their
    last checkpoint), at most ``retries`` times; the restarts are counted and their time is in the run's wall time.
    A sweep that finished earlier in the same work folder (``--stamp``) is reused as it is."""
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    status = work / "logs" / f"{name}.json"
    job = {"work": str(work), "study": str(study), "index": index, "name": name, "trials": trials, "seed": seed,
           "method": method}
    if log.is_file() and status.is_file() and f"child: sweep {name} done, 0 errored" in log.read_text():
        print(f"  {name}: finished earlier in this work folder, reused", flush=True)
    else:
        run_child(job, log, work, name, retries)
    child = json.loads(status.read_text())
    # The clock starts when the child's Ray is up, right before run_sweep, and stops when run_sweep returns.
    end = child.get("end", log.stat().st_mtime)
    restarts = log.read_text().count("Restoring the run from the latest experiment state")
    reports = load_reports(work / "ray_results" / name)
    if method == "grid":
        reports = first_trial_per_config(reports)
    n_trials = len({r["trial_id"] for r in reports})
    print(f"  {name}: {n_trials} trials, {len(reports)} trial-epochs, {end - child['start']:.0f} s, "
          f"{restarts} restart(s) (log: {log})", flush=True)
    return {"name": name, "start": child["start"], "wall": end - child["start"], "reports": reports,
            "restarts": restarts}


def run_child(job: dict, log: Path, work: Path, name: str, retries: int) -> None:
    """Run one sweep in a child process, resuming it after a failure."""
    restarts = 0
    with open(log, "w") as fh:
        while True:
            proc = subprocess.run([sys.executable, str(SCRIPT), "--child", json.dumps({**job, "resume": restarts > 0})],
                                  stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode == 0:
                return
            if restarts >= retries or not (work / "ray_results" / name).is_dir():
                sys.exit(f"sweep {name} failed (exit {proc.returncode}); see {log}")
            restarts += 1
            print(f"  {name}: exit {proc.returncode}, resuming (restart {restarts})", flush=True)


def first_trial_per_config(reports: list[dict]) -> list[dict]:
    """The grid's reports, one trial per configuration: a sweep resumed after its Ray died can restore an older
    searcher state and train a configuration twice (and skip another, which ``main`` then runs in a fill-in
    sweep); the later duplicate is left out of the grid's results and compute."""
    first: dict[tuple, str] = {}
    for r in reports:  # wall-clock order
        first.setdefault(config_key(r), r["trial_id"])
    return [r for r in reports if first[config_key(r)] == r["trial_id"]]


def config_key(r: dict) -> tuple:
    return tuple(r["config"][k] for k in ("window_length", "window_overlap", "label_fusion", "fps"))


def child(job: dict) -> None:
    """The child process of ``sweep``: start Ray, then run (or resume) the sweep with the platform's ``run_sweep``."""
    from cluster.sweep import SweepOptions, init_ray, run_sweep

    work = Path(job["work"])
    os.chdir(work)
    init_ray(None, log_to_driver=False)
    status = work / "logs" / f"{job['name']}.json"
    start = json.loads(status.read_text())["start"] if job["resume"] and status.is_file() else time.time()
    status.write_text(json.dumps({"start": start}))
    if job["resume"]:
        opts = SweepOptions(resume=job["name"], storage=str(work / "ray_results"), executor="inline")
    else:
        opts = SweepOptions(space=job["study"], data_index=job["index"], num_samples=job["trials"], max_concurrent=2,
                            cpus_per_worker=1, gpus_per_worker=0, storage=str(work / "ray_results"),
                            name=job["name"], seed=job["seed"], tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                            experiment="bench-search-efficiency", artifact_root=str(work / "mlartifacts"),
                            optuna_storage=f"sqlite:///{work / 'optuna.db'}", executor="inline")
    # A resumed sweep restores its searcher (with its sampler) from Tune's experiment checkpoint.
    patch = random_sampler() if job["method"] == "random" and not job["resume"] else contextlib.nullcontext([])
    with patch as calls:
        outcome = run_sweep(opts)
    if job["method"] == "random" and not job["resume"] and calls != [job["seed"]]:
        print(f"the random-sampler patch was used {len(calls)} times (expected once)", flush=True)
        sys.exit(4)
    status.write_text(json.dumps({"start": start, "end": time.time()}))
    errors = [r for r in outcome.results if r.error is not None]
    print(f"child: sweep {job['name']} done, {len(errors)} errored trial(s)", flush=True)
    sys.exit(3 if errors else 0)


def load_reports(folder: Path) -> list[dict]:
    """Every report of every trial of a sweep, in wall-clock order (Tune's timestamp has whole seconds; ties are
    broken by the trial's own elapsed time)."""
    keep = ("trial_id", "epoch", "timestamp", "time_total_s", METRIC, "diverged", "config")
    out, seen = [], set()
    for path in folder.glob("trial-*/result.json"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if (r["trial_id"], r["epoch"]) in seen:  # an epoch re-reported after a resume counts once
                continue
            seen.add((r["trial_id"], r["epoch"]))
            r = {k: r.get(k) for k in keep}
            r["config"] = {k: r["config"][k] for k in ("window_length", "window_overlap", "label_fusion", "fps")}
            out.append(r)
    out.sort(key=lambda r: (r["timestamp"], r["time_total_s"]))
    return out


def score(r: dict) -> float:
    v = r.get(METRIC)
    return float("-inf") if v is None or r.get("diverged") == 1 or v != v else float(v)


def curve(reports: list[dict]) -> list[float]:
    """Best-so-far objective after each trial-epoch."""
    best, out = float("-inf"), []
    for r in reports:
        best = max(best, score(r))
        out.append(best)
    return out


def time_to_target(run: dict, target: float) -> tuple[int | None, float | None]:
    """(trial-epochs, wall seconds from the sweep's start) up to the first report at or above ``target``."""
    for i, r in enumerate(run["reports"], 1):
        if score(r) >= target:
            return i, r["timestamp"] - run["start"]
    return None, None


def knob_effects(grid: dict, setup: dict) -> list[str]:
    """Each knob's value against the mean (over the other knobs) of a configuration's best objective."""
    best: dict[tuple, float] = {}
    for r in grid["reports"]:
        key = tuple(r["config"][k] for k in setup["grid"])
        best[key] = max(best.get(key, float("-inf")), score(r))
    lines = []
    for i, k in enumerate(setup["grid"]):
        means = []
        for v in setup["grid"][k]:
            vals = [s for key, s in best.items() if key[i] == v]
            means.append(f"{v}: {sum(vals) / len(vals):.3f}")
        lines.append(f"  {k:15s} " + "   ".join(means))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    lines.append("  top configurations (window_length, overlap, fusion, fps -> best " + METRIC + "): " +
                 "; ".join(f"{key} {s:.4f}" for key, s in ranked[:5]))
    lines.append(f"  configurations within {TOLERANCE} of the best: "
                 f"{sum(s >= ranked[0][1] - TOLERANCE for _, s in ranked)} of {len(ranked)}; worst: {ranked[-1][1]:.4f}")
    return lines


def target_configs(grid: dict, runs: dict[str, list[dict]], target: float, epochs: int) -> list[str]:
    """The configurations that reach the target in the grid (with their curves there), and how far each searched run
    trained each of them: a target configuration stopped before the epoch where it reaches the target was lost at a
    rung."""
    curves: dict[tuple, list[float]] = {}
    for r in grid["reports"]:
        curves.setdefault(config_key(r), []).append(score(r))
    hits = {k: next(i for i, v in enumerate(c, 1) if v >= target) for k, c in curves.items() if max(c) >= target}
    lines = ["configurations reaching the target in the grid (first epoch at or above it; the grid's curve):"]
    lines += [f"  {k}: epoch {e}; {' '.join(f'{v:.3f}' for v in curves[k])}" for k, e in hits.items()]
    for kind in ("tpe", "random"):
        for run in runs[kind]:
            trained = {}
            for r in run["reports"]:
                trained[config_key(r)] = max(trained.get(config_key(r), 0), r["epoch"])
            fate = [f"{k} {'not tried' if k not in trained else f'to epoch {trained[k]}'}"
                    f"{' (lost at a rung)' if k in trained and trained[k] < hits[k] and trained[k] < epochs else ''}"
                    for k in hits]
            lines.append(f"  {kind} seed {run['seed']}: " + "; ".join(fate))
    return lines


def plot(runs: dict[str, list[dict]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"grid": ("black", "-"), "tpe": ("tab:blue", "-"), "random": ("tab:orange", "--")}
    for kind, items in runs.items():
        color, ls = styles[kind]
        for j, run in enumerate(items):
            ys = curve(run["reports"])
            label = {"grid": "grid (every config, every epoch)", "tpe": "TPE + ASHA",
                     "random": "random + ASHA"}[kind] + ("" if kind == "grid" else f" seed {run['seed']}")
            ax.step(range(1, len(ys) + 1), ys, where="post", color=color, ls=ls, alpha=1.0 if kind == "grid" else
                    0.55 + 0.15 * j, lw=1.8 if kind == "grid" else 1.3, label=label)
    ax.axhline(target, color="green", ls=":", lw=1.2, label=f"target: grid best - {TOLERANCE}")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative trial-epochs (log scale)")
    ax.set_ylabel(f"best-so-far validation {METRIC}")
    lo = min(min(curve(r["reports"])[-1] for r in items) for items in runs.values())
    ax.set_ylim(max(-0.05, min(lo, target) - 0.15), min(1.0, target + 0.04))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Search efficiency: paper 003's window grid on cnn_rnn_tiny")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt_share(n: int | None, total: int) -> str:
    return "not reached" if n is None else f"{100 * n / total:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="folder for the dataset (cached), sweeps, logs and the plot "
                                                 "(default: a new temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a ~5 minute smoke version")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per searched method")
    ap.add_argument("--budget", type=int, default=None, help="trials per searched run (default: grid size / 3)")
    ap.add_argument("--stamp", default=None, help="name suffix of the sweeps (default: now); with the --work of an "
                    "earlier run, its finished sweeps are reused and only the missing ones run")
    ap.add_argument("--grid-stamp", default=None, help="take the grid from the sweeps of this earlier --stamp in the "
                    "same --work (the grid never stops a trial: it does not depend on the search's settings)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one sweep (see sweep())
    a = ap.parse_args()
    if a.child:
        return child(json.loads(a.child))
    setup = QUICK if a.quick else FULL
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-search-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # anything the platform writes relative to the working folder lands here
    grid_size = 1
    for values in setup["grid"].values():
        grid_size *= len(values)
    budget = a.budget or max(2, round(grid_size / 3))
    stamp = a.stamp or time.strftime("%Y%m%d-%H%M%S")
    t_all = time.time()
    print(f"work folder: {work}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"grid: {' x '.join(f'{k} {v}' for k, v in setup['grid'].items())} = {grid_size} configs x "
          f"{setup['epochs']} epochs = {grid_size * setup['epochs']} trial-epochs; searched runs: {budget} trials, "
          f"ASHA grace {setup['grace']} reduction {setup['reduction_factor']} max {setup['epochs']}, "
          f"seeds 0..{a.seeds - 1}; 2 trials at a time, 1 CPU each")

    print("[1/4] dataset")
    index = build_data(work, setup["data"])
    grid_study, search_study = work / "grid.yaml", work / "search.yaml"
    write_study(grid_study, setup, grid=True)
    write_study(search_study, setup, grid=False)

    print("[2/4] the grid (every configuration, every epoch)", flush=True)
    grid_stamp = a.grid_stamp or stamp
    grid = sweep(work, grid_study, index, f"grid-{grid_stamp}", grid_size, 0, "grid")
    keys = list(setup["grid"])
    done = {config_key(r) for r in grid["reports"]}
    missing = [dict(zip(keys, c)) for c in itertools.product(*setup["grid"].values()) if c not in done]
    if missing:
        # A resumed grid sweep can skip a point (see first_trial_per_config): train the missing ones, with the same
        # machinery, and count them as if they had run right after the rest of the grid.
        print(f"  the grid sweep left out {len(missing)} configuration(s): {missing}; running them now", flush=True)
        fill_study = work / "grid-fill.yaml"
        write_study(fill_study, setup, grid=True, points=missing)
        fill = sweep(work, fill_study, index, f"gridfill-{grid_stamp}", len(missing), 0, "grid")
        shift = fill["start"] - (grid["start"] + grid["wall"])
        grid["reports"] += [{**r, "timestamp": r["timestamp"] - shift} for r in fill["reports"]]
        grid["wall"] += fill["wall"]
        grid["restarts"] += fill["restarts"]
    print("[3/4] TPE + ASHA and random + ASHA", flush=True)
    runs = {"grid": [grid], "tpe": [], "random": []}
    for seed in range(a.seeds):
        run = sweep(work, search_study, index, f"tpe-s{seed}-{stamp}", budget, seed, "tpe")
        runs["tpe"].append({**run, "seed": seed})
        run = sweep(work, search_study, index, f"random-s{seed}-{stamp}", budget, seed, "random")
        runs["random"].append({**run, "seed": seed})

    print("[4/4] results", flush=True)
    grid_best = max(score(r) for r in grid["reports"])
    target = grid_best - TOLERANCE
    total = len(grid["reports"])
    n_configs = len({config_key(r) for r in grid["reports"]})
    print(f"grid: {n_configs} configurations trained (of {grid_size}), one trial each")
    print(f"grid best {METRIC} = {grid_best:.4f}; target = {target:.4f}; the grid's compute: {total} trial-epochs, "
          f"{grid['wall']:.0f} s")
    print("what the knobs do on this dataset (mean over the other knobs of each configuration's best):")
    for line in knob_effects(grid, setup):
        print(line)
    for line in target_configs(grid, runs, target, setup["epochs"]):
        print(line)

    rows = []
    g_n, g_t = time_to_target(grid, target)
    rows.append(("grid (all configs)", total, f"{grid['wall']:.0f}", "100.0%", "100.0%", total, grid["wall"],
                 f"{grid_best:.4f}"))
    rows.append(("  grid, in its own order", g_n, f"{g_t:.0f}", fmt_share(g_n, total),
                 fmt_share(g_t, grid["wall"]) if g_t is not None else "-", total, grid["wall"], f"{grid_best:.4f}"))
    means = {}
    for kind, label in (("tpe", "TPE+ASHA"), ("random", "random+ASHA")):
        ns, ts = [], []
        for run in runs[kind]:
            n, t = time_to_target(run, target)
            ns.append(n)
            ts.append(t)
            rows.append((f"{label} seed {run['seed']}", n, "-" if t is None else f"{t:.0f}", fmt_share(n, total),
                         "-" if t is None else f"{100 * t / grid['wall']:.1f}%", len(run["reports"]), run["wall"],
                         f"{max(score(r) for r in run['reports']):.4f}"))
        reached = [n for n in ns if n is not None]
        spent = [n if n is not None else len(run["reports"]) for n, run in zip(ns, runs[kind])]
        mean_n = sum(spent) / len(spent)  # a run that never reached the target counts its whole spend: a lower bound
        if len(reached) == len(ns):
            mean_t = sum(ts) / len(ts)
            rows.append((f"{label} mean", f"{mean_n:.1f}", f"{mean_t:.0f}", f"{100 * mean_n / total:.1f}%",
                         f"{100 * mean_t / grid['wall']:.1f}%",
                         f"{sum(len(r['reports']) for r in runs[kind]) / len(ns):.1f}",
                         sum(r["wall"] for r in runs[kind]) / len(ns), f"{len(reached)}/{len(ns)} reached"))
        else:
            rows.append((f"{label} mean", f">= {mean_n:.1f}", "-", f">= {100 * mean_n / total:.1f}%", "-",
                         f"{sum(len(r['reports']) for r in runs[kind]) / len(ns):.1f}",
                         sum(r["wall"] for r in runs[kind]) / len(ns), f"{len(reached)}/{len(ns)} reached"))
        means[kind] = (mean_n, len(reached), len(ns), max(spent))

    head = ("run", "trial-epochs to target", "wall s to target", "share of grid trial-epochs", "share of grid wall",
            "trial-epochs total", "wall s total", f"best {METRIC}")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *[(r[0], r[1] if r[1] is not None else "not reached",
                                                                    *r[2:6], f"{r[6]:.0f}", r[7]) for r in rows])]
    print()
    print(f"Search efficiency: time until the first trial within {TOLERANCE} {METRIC} of the grid's best "
          f"({grid_best:.4f})")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        cells = (r[0], "not reached" if r[1] is None else r[1], *r[2:6], f"{r[6]:.0f}", r[7])
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    restarted = [f"{r['name']} ({r['restarts']})" for items in runs.values() for r in items if r["restarts"]]
    print(f"sweeps resumed after their Ray died or trials errored: {', '.join(restarted) or 'none'}")
    (tpe, tpe_ok, n_seeds, tpe_worst), (rnd, rnd_ok, _, _) = means["tpe"], means["random"]
    ok_share = tpe_ok == n_seeds and tpe_worst <= 0.2 * total
    ok_random = tpe_ok >= rnd_ok and (tpe < rnd if tpe_ok == rnd_ok == n_seeds else tpe_ok > rnd_ok or tpe < rnd)
    print()
    print(f"(a mean marked >= counts a seed that never reached the target at everything it spent: a lower bound)")
    print(f"goal 1, TPE+ASHA <= 20% of the grid's trial-epochs on every seed: {'met' if ok_share else 'NOT met'} "
          f"({tpe_ok}/{n_seeds} seeds reached; worst {'>= ' if tpe_ok < n_seeds else ''}"
          f"{100 * tpe_worst / total:.1f}%, mean {'>= ' if tpe_ok < n_seeds else ''}{100 * tpe / total:.1f}%)")
    print(f"goal 2, TPE+ASHA below random+ASHA: {'met' if ok_random else 'NOT met'} "
          f"({tpe_ok}/{n_seeds} vs {rnd_ok}/{n_seeds} seeds reached; mean trial-epochs "
          f"{'>= ' if tpe_ok < n_seeds else ''}{tpe:.1f} vs {'>= ' if rnd_ok < n_seeds else ''}{rnd:.1f})")
    png = work / "search_efficiency.png"
    plot(runs, target, png)
    (work / "search_efficiency.json").write_text(json.dumps(
        {"grid_best": grid_best, "target": target, "setup": setup, "budget": budget,
         "runs": {k: [{"name": r["name"], "seed": r.get("seed"), "wall": r["wall"],
                       "to_target": time_to_target(r, target), "curve": curve(r["reports"])} for r in v]
                  for k, v in runs.items()}}, indent=1, default=str))
    print(f"plot: {png}")
    print(f"data: {work / 'search_efficiency.json'}; sweep logs: {work / 'logs'}; MLflow: sqlite:///{work / 'mlflow.db'}")
    print(f"benchmark finished in {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    main()
