"""Sweep overhead: runs a real sweep of N short trials and prints where each trial's time outside its epochs goes, and
the share of wall time spent in training steps and in whole epochs.

    python benchmarks/bench_sweep_overhead.py --trials 8 --epochs 3 --frames 400 [--repeat 3] [--executor train]

Everything is measured in one run, from the sweep's own records:

* each trial's reports (Tune's ``result.json``): seconds in training steps (``train_time_s``), in whole epochs
  (``epoch_time_s``: training + validation + post-processing), the wall-clock start of every epoch
  (``unit_started_at``), and the trial's start-up marks (``trial_entered_at``: the trial function entered;
  ``fit_started_at``: the training code imported; ``built_at``: data, model and optimiser built, checkpoint restored);
* each trial's MLflow run (the sweep's SQLite store): its start is Tune's trial start (the driver's
  ``on_trial_start``, once the trial's process is ready), its end the driver's record of the trial's end (after the
  final report's callbacks and the best checkpoint's upload).

Per trial it prints: ``lead`` (Tune's trial start to its first epoch), split into ``enter`` (start to the trial
function), ``import`` (the training code), ``build`` (data, model) and ``first`` (built to the first batch);
``between`` (inside the trial, not in an epoch: reports and checkpoints); ``tail`` (last epoch's end to the trial's
end); ``gap`` (the previous trial's end in the same slot to this trial's start: scheduling, the searcher, resetting
or starting the process). A slot is one of ``--concurrent`` places a trial runs in; a trial takes the slot that was
freed last before it started.

The headline: per-trial overhead = (slot time - seconds in epochs) / trials, and the share of slot time in epochs
after the sweep's one-time start-up (Ray, MLflow, the first processes: until the first epoch starts). With
``--repeat`` the headline figures are medians over the runs.

The floor (each run, after the sweep): the same machine's start-up with nothing of emotune's driver in it. A bare
script imports Ray, starts a local Ray as a sweep starts its own (no dashboard, no idle workers started ahead; without
the runtime environment a sweep's job carries, so if anything a little faster), and runs ``--concurrent`` Tune trials
whose function
only imports the training code (``trainables.loop``: torch, torchvision, timm, the models). From that command's start
it prints when Ray was up, when the trials entered their function and when their import ended. ``per-trial overhead
at the floor`` puts that start-up in place of the sweep's and keeps everything else measured (reused trials, tails,
shut-down): no sweep on this machine, whatever its driver does, can start faster than a trial process can exist and
import torch.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """
name: bench
objective: {{metric: val_ccc_mean, mode: max}}
fidelity: {{attr: epoch, max: {epochs}, grace: {epochs}, reduction_factor: 2}}
resources: {{workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}}
fixed: {{backbone: cnn_rnn_tiny, window_length: 32, clip_len: 24, label_fusion: mean, ssts_stochastic: true,
        batch_size: 8, w_ccc: 1.0, seed: 0, rnn_hidden: 32, window_overlap: 0.75, ssts_stride: 2, postprocess: false}}
params:
  lr: {{type: loguniform, low: 5.0e-4, high: 3.0e-3}}
"""

FLOOR = """
import json, os, sys, time
started = float(sys.argv[1])
os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
import ray
from ray import tune
ray.init(address="local", include_dashboard=False, log_to_driver=False,
         _system_config={{"prestart_worker_first_driver": False}})
up = time.time()

def trial(config):
    entered = time.time()
    import trainables.loop  # noqa: F401
    tune.report({{"entered": entered, "imported": time.time()}})

results = tune.Tuner(tune.with_resources(trial, {{"cpu": 1}}),
                     param_space={{"i": tune.grid_search(list(range({concurrent})))}},
                     tune_config=tune.TuneConfig(max_concurrent_trials={concurrent}),
                     run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
failed = [str(r.error) for r in results if r.error]
if failed:
    sys.exit("a floor trial failed: " + failed[0])
print(json.dumps({{"ray_up": up - started, "entered": [r.metrics["entered"] - started for r in results],
                  "imported": [r.metrics["imported"] - started for r in results]}}))
ray.shutdown()
"""

COLUMNS = ("gap", "lead", "enter", "import", "build", "first", "between", "tail", "outside", "epochs")


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def mlflow_spans(db: Path) -> dict[str, tuple[float, float]]:
    """Trial id -> (start, end) of its MLflow run, in seconds since the epoch."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT t.value, r.start_time, r.end_time FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                           "WHERE t.key = 'emotune.trial_id'").fetchall()
    return {trial: (start / 1000, (end or start) / 1000) for trial, start, end in rows}


def trial_rows(work: Path, name: str) -> list[dict]:
    """One row per trial: its reports' totals and the spans the module docstring describes."""
    spans = mlflow_spans(work / "mlflow.db")
    rows = []
    for result in (work / "ray_results" / name).glob("trial-*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        if not reports:
            continue
        first, last = reports[0], reports[-1]
        start, end = spans[first["trial_id"]]
        epochs = sum(r.get("epoch_time_s", 0.0) for r in reports)
        epoch_start = first["unit_started_at"]
        epoch_end = last["unit_started_at"] + last["epoch_time_s"]
        rows.append({"trial": first["trial_id"], "pid": first.get("worker_pid", first["pid"]), "start": start,
                     "end": end, "epoch_start": epoch_start, "epochs": epochs, "reports": len(reports),
                     "train": sum(r.get("train_time_s", 0.0) for r in reports),
                     "lead": epoch_start - start, "between": (epoch_end - epoch_start) - epochs,
                     "tail": end - epoch_end, "enter": first["trial_entered_at"] - start,
                     "import": first["fit_started_at"] - first["trial_entered_at"],
                     "build": first["built_at"] - first["fit_started_at"], "first": epoch_start - first["built_at"],
                     "checkpoint": sum(r.get("checkpoint_write_s", 0.0) for r in reports)})
    return sorted(rows, key=lambda r: r["start"])


def floor_startup(concurrent: int, work: Path) -> dict:
    """The bare Tune start-up of the module docstring, in a fresh process: seconds from its start."""
    script = work / "floor.py"
    script.write_text(FLOOR.format(concurrent=concurrent))
    out = run([sys.executable, str(script), repr(time.time()), str(work / "floor_results")], work)
    return json.loads(out.strip().splitlines()[-1])


def assign_slots(rows: list[dict], concurrent: int, started: float) -> None:
    """Give each trial a slot and the gap since that slot's previous trial ended (or since the sweep started): the
    slot of the trial whose process it reuses, else the slot freed last before it started."""
    free = [started] * concurrent  # when each slot was last freed
    pids = [None] * concurrent  # the process of each slot's latest trial
    for row in rows:
        ready = [i for i, t in enumerate(free) if t <= row["start"] + 0.05] or list(range(concurrent))
        same = [i for i in ready if pids[i] == row["pid"]]
        slot = same[0] if same else max(ready, key=lambda i: free[i])
        row["slot"], row["gap"], row["first_in_slot"] = slot, row["start"] - free[slot], free[slot] == started
        free[slot], pids[slot] = row["end"], row["pid"]


def one_run(a, exe: str, rep: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep) / f"run{rep}" if a.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run([exe, "data", "synth", "--out", "data", "--frames", str(a.frames)], work)
        out = run([exe, "data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache"], work)
        index = out.split("dataset index: ")[1].strip()
        (work / "bench.yaml").write_text(SPACE.format(epochs=a.epochs))
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        t0, started = time.perf_counter(), time.time()
        run([exe, "sweep", "--space", "bench.yaml", "--data", index, "--trials", str(a.trials), "--name", "bench",
             "--max-concurrent", str(a.concurrent), "--executor", a.executor], work)
        wall = time.perf_counter() - t0
        rows = trial_rows(work, "bench")
        floor = floor_startup(a.concurrent, work)
    assign_slots(rows, a.concurrent, started)
    slots = wall * a.concurrent
    epoch = sum(r["epochs"] for r in rows)
    train = sum(r["train"] for r in rows)
    startup = min(r["epoch_start"] for r in rows) - started
    steady = slots - startup * a.concurrent
    # The slot-time outside epochs, split: each trial's own spans; the gaps before the first trial of each slot are
    # the sweep's start-up, and what remains after the last trial of each slot is the sweep's shut-down.
    for r in rows:
        r["outside"] = (0.0 if r["first_in_slot"] else r["gap"]) + r["lead"] + r["between"] + r["tail"]
    shutdown = sum(started + wall - max(r["end"] for r in rows if r["slot"] == s)
                   for s in {r["slot"] for r in rows})
    # The sweep's own tail: the last trial's end to the command's exit (Tune's end, the sweep's records, Ray's
    # shut-down); the rest of the per-slot shut-down is slots idle while the last trial runs.
    exit_tail = started + wall - max(r["end"] for r in rows)
    print(f"\nrun {rep + 1}: executor={a.executor} trials={len(rows)} epochs={a.epochs} concurrent={a.concurrent} "
          f"wall={wall:.1f}s load(1/5/15 min) before={' '.join(load)} after="
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3]) if load else ''}")
    print(f"{'trial':>12} {'slot':>4} {'pid':>7} " + " ".join(f"{c:>7}" for c in COLUMNS) + f" {'ckpt':>6}")
    for r in rows:
        gap = f"({r['gap']:5.2f})" if r["first_in_slot"] else f"{r['gap']:7.2f}"
        print(f"{r['trial']:>12} {r['slot']:>4} {r['pid']:>7} {gap} " +
              " ".join(f"{r[c]:7.2f}" for c in COLUMNS[1:]) + f" {r['checkpoint']:6.2f}")
    later = [r for r in rows if not r["first_in_slot"]]
    mean = {c: statistics.fmean(r[c] for r in rows) for c in COLUMNS[1:]}
    mean["gap"] = statistics.fmean(r["gap"] for r in later) if later else 0.0
    print(f"{'mean':>12} {'':>4} {'':>7} " + " ".join(f"{mean[c]:7.2f}" for c in COLUMNS) +
          f" {statistics.fmean(r['checkpoint'] for r in rows):6.2f}")
    print("(gap in parentheses: a slot's first trial, waiting for the sweep's start-up; not in 'outside')")
    per_trial = (slots - epoch) / len(rows)
    print(f"sweep start-up {startup:.1f}s (to the first epoch), shut-down {shutdown / a.concurrent:.1f}s per slot "
          f"(last trial's end to the sweep's exit; {exit_tail:.1f}s after the last trial); trial processes: "
          f"{len({r['pid'] for r in rows})}")
    print(f"training steps: {train:.1f}s of {slots:.1f} slot-seconds = {100 * train / slots:.1f}%; whole epochs "
          f"{epoch:.1f}s = {100 * epoch / slots:.1f}%; mean trial length in epochs {epoch / len(rows):.1f}s")
    print(f"per-trial overhead (slot time outside epochs): {per_trial:.2f}s; per trial in its slot (gap + lead + "
          f"between + tail) {mean['outside']:.2f}s")
    print(f"after the start-up: training steps {100 * train / steady:.1f}%, whole epochs {100 * epoch / steady:.1f}% "
          "of slot time")
    # The floor: the bare script's start-up to the end of each trial's import, plus what this sweep's first trials
    # still did before their first epoch (building data and model, the first batch), in place of each slot's start-up.
    first = [r for r in rows if r["first_in_slot"]]
    built = statistics.fmean(r["build"] + r["first"] for r in first) if first else 0.0
    sweep_starts = sum(r["epoch_start"] - started for r in first)
    floor_starts = sum(sorted(floor["imported"])[:len(first)]) + built * len(first)
    floor_per_trial = per_trial - (sweep_starts - floor_starts) / len(rows)
    print(f"floor (bare Ray + Tune, trials importing the training code): Ray up {floor['ray_up']:.1f}s, trials in "
          f"their function {max(floor['entered']):.1f}s, imported {max(floor['imported']):.1f}s after the command's "
          f"start; with this sweep's build and first batch ({built:.2f}s) {floor_starts / max(1, len(first)):.1f}s "
          f"per slot to a first epoch, against the sweep's {sweep_starts / max(1, len(first)):.1f}s")
    print(f"per-trial overhead at the floor (each slot's start-up replaced by the floor's, all else as measured): "
          f"{floor_per_trial:.2f}s")
    return {"per_trial": per_trial, "floor_per_trial": floor_per_trial,
            "floor_startup": floor_starts / max(1, len(first)), "in_slot": mean["outside"],
            "epochs_after_startup": 100 * epoch / steady,
            "train_after_startup": 100 * train / steady, "wall": wall, "startup": startup,
            "shutdown": shutdown / a.concurrent, "exit_tail": exit_tail}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=400, help="frames per synthetic video (longer = longer trials)")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--executor", default="auto", choices=("auto", "inline", "train"))
    ap.add_argument("--repeat", type=int, default=1, help="runs; the summary gives their medians")
    ap.add_argument("--keep", help="keep each run's sweep folder under this folder")
    a = ap.parse_args()
    exe = str(Path(sys.executable).with_name("emotune"))
    runs = [one_run(a, exe, rep) for rep in range(a.repeat)]
    if a.repeat > 1:
        print(f"\nmedians of {a.repeat} runs: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0]))


if __name__ == "__main__":
    main()
