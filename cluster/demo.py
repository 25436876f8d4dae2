"""``emotune demo``: synthesise a face-video dataset, prepare it, sweep, then the way to production: the sweep's
report, promotion of its best trial (gated on the test subjects) and a prediction on a video of a subject the dataset
does not hold. Every step is the one its own command runs."""
from __future__ import annotations

import time
from pathlib import Path

from trainables.console import say


def cmd_demo(a) -> int:
    """Synthesise, prepare, sweep, then the way to production: the sweep's report, promotion of its best trial (gated
    on the test subjects) and a prediction on a video of a subject the dataset does not hold."""
    from cluster.commands import print_outcome, sweep_exit_status
    from cluster.sweep import SweepOptions, run_sweep
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize
    from trainables.storage import default_optuna_storage, default_tracking_uri

    root = Path(a.root).resolve()
    t0 = time.time()
    say(f"[1/6] synthetic face videos -> {root / 'data'}")
    manifest = synthesize(root / "data", seed=a.seed)
    say(f"[2/6] prepare (decode once, crop faces) -> {root / 'cache'}")
    index, summary = prepare(manifest, root / "cache", Registration())
    say("\n".join("      " + line for line in summary.lines()))
    say("[3/6] sweep on search_spaces/smoke.yaml")
    tracking_uri, optuna_storage = default_tracking_uri(root), default_optuna_storage(root)
    opts = SweepOptions(space="smoke", data_index=str(index), num_samples=a.trials, max_concurrent=a.max_concurrent,
                        storage=str(root / "ray_results"), name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
                        seed=a.seed, tracking_uri=tracking_uri, experiment="emotune-demo",
                        artifact_root=str(root / "mlartifacts"), optuna_storage=optuna_storage,
                        ray_address=a.address, verbose=a.verbose)
    outcome = run_sweep(opts)
    status = sweep_exit_status(print_outcome(outcome, int(outcome.space.fidelity["max"])))
    if status == 0:
        to_production(root, manifest, outcome.name, tracking_uri, optuna_storage)
    say(f"Demo finished in {time.time() - t0:.0f} s")
    return status


def to_production(root: Path, manifest: Path, sweep: str, tracking_uri: str, optuna_storage: str) -> None:
    """Steps 4 to 6 of the demo: report, promote, predict a held-out subject's video."""
    import pandas as pd

    from analysis.commands import mlflow_client
    from analysis.models import resolve_model
    from analysis.promote import promote
    from analysis.registry import ALIAS
    from analysis.report import write_report
    from trainables.objectives.metrics import regression_report
    from trainables.predict import predict_files
    from trainables.prepare.synth import synthesize_heldout

    say(f"[4/6] report of sweep {sweep}")
    report, _ = write_report(mlflow_client(tracking_uri), sweep, root / "report", optuna_storage)
    say(f"      report: {report}")
    say("[5/6] promote the best trial (scored on the test subjects, which no trial has seen)")
    # A demo run again in the same folder meets the model an earlier run promoted: a refusal is an answer here, and
    # the prediction below uses whichever model holds the alias.
    outcome = promote(sweep, tracking_uri, model_name="emotune", out_dir=root)
    say(f"      {outcome.message}")
    if outcome.promoted:
        say(f"      registered model: models:/emotune@{ALIAS} (version {outcome.version}) in {tracking_uri}")
        say(f"      production.yaml: {outcome.yaml_path}")
    say("[6/6] predict a video of a subject outside the dataset")
    held = synthesize_heldout(root / "heldout", manifest)
    bundle = resolve_model(f"models:/emotune@{ALIAS}", tracking_uri)
    # The synthetic faces come with their sidecar (as the training cache did); on real footage the model's
    # registration runs a detector instead (`emotune predict --detector opencv`).
    (csv, png, table), = predict_files(bundle, [held["video"]], root / "predictions", detector="precomputed",
                                       faces=[held["faces"]], progress=False)
    labels = pd.read_csv(held["labels"])[["valence", "arousal"]].to_numpy()
    ccc = regression_report(labels, table[["valence", "arousal"]].to_numpy()) if len(labels) == len(table) else None
    say(f"      prediction: {csv}")
    say(f"      plot:       {png}")
    if ccc is not None:
        say(f"      CCC against its synthetic labels: valence {ccc['ccc_valence']:.3f}, arousal "
            f"{ccc['ccc_arousal']:.3f}, mean {ccc['ccc_mean']:.3f}")
