"""Sweep overhead: runs a real sweep of N short trials (about 30 s each here) and prints the share of wall time spent
in training steps and in whole epochs, and the per-trial overhead (everything outside the trials' epochs: Ray and
MLflow start-up, trial processes, scheduling, checkpoints, records).

    python benchmarks/bench_sweep_overhead.py --trials 8 --epochs 3 --frames 400 [--executor train]

Everything is measured in this one run: the sweep's wall time, and from each trial's reports the seconds spent in
training steps (``train_time_s``), in whole epochs (``epoch_time_s``: training + validation + post-processing) and in
the trial (Tune's ``time_total_s``). The sweep's one-time start-up is shared by its trials, so more trials amortise it.
"""
from __future__ import annotations

import argparse
import json
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


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=400, help="frames per synthetic video (longer = longer trials)")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--executor", default="auto", choices=("auto", "inline", "train"))
    a = ap.parse_args()
    exe = str(Path(sys.executable).with_name("emotune"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run([exe, "data", "synth", "--out", "data", "--frames", str(a.frames)], work)
        out = run([exe, "data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache"], work)
        index = out.split("dataset index: ")[1].strip()
        (work / "bench.yaml").write_text(SPACE.format(epochs=a.epochs))
        t0, started = time.perf_counter(), time.time()
        run([exe, "sweep", "--space", "bench.yaml", "--data", index, "--trials", str(a.trials), "--name", "bench",
             "--max-concurrent", str(a.concurrent), "--executor", a.executor], work)
        wall = time.perf_counter() - t0
        train = epoch = in_trial = 0.0
        pids, first_start = set(), float("inf")
        for result in (work / "ray_results" / "bench").glob("trial-*/result.json"):
            reports = [json.loads(line) for line in result.read_text().splitlines()]
            train += sum(r.get("train_time_s", 0.0) for r in reports)
            epoch += sum(r.get("epoch_time_s", 0.0) for r in reports)
            in_trial += reports[-1]["time_total_s"] if reports else 0.0
            pids |= {r["pid"] for r in reports}
            if reports:  # Tune's timestamps are whole seconds
                first_start = min(first_start, reports[0]["timestamp"] - reports[0]["time_this_iter_s"])
    slots = wall * a.concurrent
    print(f"executor={a.executor} trials={a.trials} epochs={a.epochs} concurrent={a.concurrent} wall={wall:.1f}s")
    print(f"training steps: {train:.1f}s of {slots:.1f} slot-seconds = {100 * train / slots:.1f}% of wall time")
    print(f"whole epochs (train + validation): {epoch:.1f}s = {100 * epoch / slots:.1f}%")
    print(f"per-trial overhead (slot time outside epochs): {(slots - epoch) / a.trials:.1f}s, of which "
          f"{(in_trial - epoch) / a.trials:.1f}s inside the trial (data, model, checkpoints) and "
          f"{(slots - in_trial) / a.trials:.1f}s outside it (Ray and MLflow start-up, scheduling, records)")
    print(f"mean trial length in epochs: {epoch / a.trials:.1f}s")
    startup = max(0.0, first_start - started)
    steady = slots - startup * a.concurrent
    print(f"after the sweep's one-time start-up (about {startup:.0f}s until the first trial trains): training steps "
          f"{100 * train / steady:.1f}%, whole epochs {100 * epoch / steady:.1f}% of slot time")
    print(f"trial processes: {len(pids)} for {a.trials} trials (inline trials reuse a finished trial's process)")


if __name__ == "__main__":
    main()
