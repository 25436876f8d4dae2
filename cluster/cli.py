"""The ``emotune`` command line: data synth | data prepare | data manifest | sweep | settings | demo.

A user error (a setting, a file, a resource request; ``trainables.errors.UserError`` and
``search_spaces.schema.SpaceError``) is printed as one line, ``emotune: error: <message>``, with exit status 2. A sweep
exits 1 when a trial errored or no trial finished.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from trainables import console
from trainables.console import say, warn
from trainables.errors import UserError


def _size(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an integer or HxW (e.g. 100x80), got {text!r}") from None


def _set_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:  # YAML reads 1e-3 as a string; a number is meant
            parsed = float(parsed) if parsed.strip().lower() not in ("nan", "inf", "-inf", "infinity") else parsed
        except ValueError:
            pass
    return key.strip(), parsed


class Parser(argparse.ArgumentParser):
    """argparse with emotune's error format: a usage error is one line, ``emotune: error: ...``, exit status 2 (as
    every other user error), naming the command whose ``--help`` tells what is allowed."""

    def error(self, message: str):
        command = self.prog[len("emotune"):].strip()
        sys.stderr.write(f"emotune: error: {command + ': ' if command else ''}{' '.join(message.split())} "
                         f"(see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="emotune", description="Hyperparameter search for continuous emotion recognition "
                                                            "(valence/arousal) from face video.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    data = sub.add_parser("data", help="make and prepare datasets").add_subparsers(dest="data_command", required=True,
                                                                              parser_class=Parser)
    s = data.add_parser("synth", help="write a synthetic face-video dataset (mp4 + labels + face sidecars + manifest)")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--subjects", type=int, default=8)
    s.add_argument("--videos-per-subject", type=int, default=2)
    s.add_argument("--frames", type=int, default=250)
    s.add_argument("--fps", type=int, default=25)
    s.add_argument("--size", type=int, default=96)
    s.add_argument("--lag-frames", type=int, default=4, help="planted annotator delay in frames")
    s.add_argument("--variant", default="per_frame")
    s.add_argument("--seed", type=int, default=0)

    pr = data.add_parser("prepare", help="decode videos once, crop faces, write the clip cache and a dataset index")
    pr.add_argument("--manifest", required=True)
    pr.add_argument("--cache", required=True, help="cache folder (shared by every dataset and trial)")
    pr.add_argument("--size", type=_size, default=64, help="face crop size: 96, 112, ... or HxW such as 100x80")
    pr.add_argument("--margin", type=float, default=0.15, help="box enlargement on each side (fraction)")
    pr.add_argument("--min-score", type=float, default=0.8, help="frames with a lower detection score are invalid")
    pr.add_argument("--grayscale", action="store_true")
    pr.add_argument("--detector", default="precomputed", choices=["precomputed", "opencv", "face_alignment"],
                    help="precomputed: the manifest's face sidecars or crop folders; opencv: Haar cascade; "
                         "face_alignment: S3FD/BlazeFace + FAN landmarks (local weights)")
    pr.add_argument("--face-detector", default="sfd", help="face_alignment's detector: sfd, blazeface, ...")
    pr.add_argument("--weights-dir", default=None, help="folder with face_alignment weights (default: "
                                                        "$EMOTUNE_FACE_WEIGHTS, then the torch hub cache)")
    pr.add_argument("--align", default="coarse", choices=["coarse", "fine"],
                    help="coarse: crop + resize; fine: 5-point similarity alignment, eyes horizontal")
    pr.add_argument("--fps", type=float, default=None, help="keep frames at this rate (default: the video's own)")
    pr.add_argument("--smooth", type=int, default=2, help="radius in frames of detected-box smoothing (0 = off)")
    pr.add_argument("--detect-width", type=int, default=480,
                    help="detect faces on frames reduced to this width (boxes mapped back, crops from the full "
                         "frame); 0 = full resolution. 480 finds faces from 80 px wide on 720p (default 480)")
    pr.add_argument("--detect-every", type=int, default=4,
                    help="run the detector on every k-th frame; boxes between are interpolated while the face is "
                         "followed, else those frames are detected too; 1 = every frame (default 4). "
                         "--detect-every 1 --detect-width 0 is the slow full detection of earlier versions")
    pr.add_argument("--workers", type=int, default=1, help="videos prepared in parallel")
    pr.add_argument("--index", default=None, help="where to write the dataset index (default: in the cache)")
    pr.add_argument("--warn-face-share", type=float, default=0.5,
                    help="name the videos with a face on fewer than this share of their frames in a warning "
                         "(default 0.5)")
    pr.add_argument("--min-face-share", type=float, default=0.0,
                    help="skip videos with a face on fewer than this share of their frames, with the reason, and "
                         "leave them out of the dataset index (default 0: skip none)")

    mf = data.add_parser("manifest", help="pair videos with label files and write a subject-split manifest")
    mf.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    mf.add_argument("--labels", required=True, help="folder of label files with the videos' stems")
    mf.add_argument("--format", required=True, help="label format: frame_csv, second_csv, affwild2_va, afew_va, "
                                                    "sewa_csv, recola_arff")
    mf.add_argument("--faces", default=None, help="folder of face sidecars or crop folders (optional)")
    mf.add_argument("--subject-pattern", default=r"^(?P<subject>[^_]+)",
                    help="regex with a named group 'subject' applied to each video id")
    mf.add_argument("--val-fraction", type=float, default=0.2)
    mf.add_argument("--test-fraction", type=float, default=0.2)
    mf.add_argument("--seed", type=int, default=0)
    mf.add_argument("--out", required=True, help="manifest CSV to write")

    fw = data.add_parser("fetch-weights", help="download face-alignment weights (on a machine with internet)")
    fw.add_argument("--to", required=True, help="folder to put them in; point --weights-dir or "
                                                "$EMOTUNE_FACE_WEIGHTS at it")
    fw.add_argument("--face-detector", default="sfd")

    sw = sub.add_parser("sweep", help="run a hyperparameter sweep")
    _sweep_args(sw)
    sw.add_argument("--data", default=None, action="append", metavar="[NAME=]INDEX",
                    help="dataset index written by `emotune data prepare`; repeat as NAME=INDEX, one per "
                         "registration setting, for studies that search 'registration' (not with --resume)")
    sw.add_argument("--dry-run", action="store_true",
                    help="check every configuration the sweep can start against the trial settings, the data and "
                         "the cluster, then stop (nothing is started or recorded)")

    sub.add_parser("settings", help="list every trial setting: group, default and what is allowed")

    rp = sub.add_parser("report", help="write an HTML report of a sweep (leaderboard, importance, figures, the "
                                       "study's tables) and log it to the sweep's MLflow parent run")
    rp.add_argument("sweep", metavar="SWEEP", help="sweep name or its MLflow parent run id")
    rp.add_argument("--out", default=None, help="folder for report.html and figures/ (default: beside the sweep's "
                                                "Ray results, <results>-report)")
    _store_args(rp)
    rp.add_argument("--optuna-storage", default=None,
                    help="Optuna RDB storage holding the sweep's study (default: sqlite file ./optuna.db)")

    cp = sub.add_parser("compare", help="compare sweeps side by side: best configuration and metrics, the settings "
                                        "that differ, best-so-far objective against trials")
    cp.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep names or MLflow parent run ids (any experiment)")
    cp.add_argument("--out", default=None, help="folder for compare.png, compare.md and compare.html")
    _store_args(cp)

    pm = sub.add_parser("promote", help="evaluate a sweep's best trial on the test subjects and, if it beats the "
                                         "model holding the alias 'production', register it as an MLflow pyfunc "
                                         "model with that alias")
    pm.add_argument("sweep", metavar="SWEEP", help="sweep name or its MLflow parent run id")
    pm.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then "
                                                       "sqlite file ./mlflow.db)")
    pm.add_argument("--model-name", default="emotune", help="registered model name (default: emotune)")
    pm.add_argument("--margin", type=float, default=0.0,
                    help="promote only if the test objective beats production's by more than this (default 0)")
    pm.add_argument("--out", default=".", help="folder for production.yaml (default: the current folder)")
    pm.add_argument("--retrain-top", type=int, default=0, metavar="K",
                    help="first train the sweep's K best configurations again (--seeds times each, full epochs) and "
                         "take the best mean over seeds (default 0: the sweep's best trial as it is)")
    pm.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per configuration with --retrain-top "
                                                                      "(default 3)")
    pm.add_argument("--max-concurrent", type=int, default=None, help="cap on concurrent retraining runs")
    pm.add_argument("--address", default=None, help="Ray cluster for --retrain-top (as `sweep --address`; default "
                                                    "$RAY_ADDRESS, else a Ray of its own)")

    pd = sub.add_parser("predict", help="valence/arousal over time for new videos: DIR/<stem>.csv and DIR/<stem>.png")
    pd.add_argument("videos", nargs="+", metavar="VIDEO")
    pd.add_argument("--model", required=True, help="runs:/<run_id> (a trial's best checkpoint), "
                                                   "models:/emotune@production, or a local state.pt")
    pd.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI for runs:/ and models:/ (default: "
                                                       "$MLFLOW_TRACKING_URI, then sqlite file ./mlflow.db)")
    pd.add_argument("--detector", default="opencv", choices=["opencv", "face_alignment", "precomputed"],
                    help="face detector (default opencv: nothing to download); precomputed reads --faces")
    pd.add_argument("--faces", action="append", default=None, metavar="SIDECAR",
                    help="face sidecar CSV per video, in order (with --detector precomputed)")
    pd.add_argument("--out", default="predictions", help="output folder (default: predictions)")

    d = sub.add_parser("demo", help="synthesise data, prepare it, sweep, report, promote the best trial and "
                                         "predict a new video")
    d.add_argument("--root", default="emotune-demo", help="folder for the demo's data, cache, MLflow store and results")
    d.add_argument("--trials", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-concurrent", type=int, default=None)
    d.add_argument("--address", default=None, help="Ray cluster for the demo's sweep (as `sweep --address`; "
                                                   "default $RAY_ADDRESS, else a Ray of its own)")
    for command in (s, pr, mf, fw, rp, cp, pm, pd, d):
        _verbose_arg(command)
    return p


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="show other tools' output (Ray, MLflow, Optuna) on the console instead of in the log file")


def _sweep_args(sw: argparse.ArgumentParser) -> None:
    sw.add_argument("--space", default="smoke", help="a study file or the name of a shipped one")
    sw.add_argument("--trials", type=int, default=8, help="number of trials")
    sw.add_argument("--epochs", type=int, default=None,
                    help="at most this many epochs per trial (default: the study's fidelity max)")
    sw.add_argument("--max-concurrent", type=int, default=None, help="cap on concurrent trials (default: what fits)")
    sw.add_argument("--workers", type=int, default=None, help="workers per trial (more than one: DDP with Ray Train)")
    sw.add_argument("--cpus-per-worker", type=float, default=None)
    sw.add_argument("--gpus-per-worker", type=float, default=None)
    sw.add_argument("--executor", choices=("auto", "inline", "train"), default="auto",
                    help="inline: a one-worker trial trains in its own Tune process (least overhead); train: a Ray "
                         "Train worker group per trial (DDP); auto (default): inline for one worker, else train")
    sw.add_argument("--storage", default="ray_results", help="Ray results folder or s3:// URI")
    sw.add_argument("--name", default=None, help="sweep name (default: space name + process id)")
    sw.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    sw.add_argument("--time-budget", type=float, default=None,
                    help="end the sweep after this many seconds: no trial starts after it, and the trials still "
                         "running are stopped where they are (listed as stopped early, their runs and best "
                         "checkpoints kept)")
    sw.add_argument("--address", default=None,
                    help="Ray cluster to run on: host:port, ray://host:port or 'auto' (the cluster `ray start` "
                         "started last on this machine); default $RAY_ADDRESS, else a Ray of the sweep's own")
    sw.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, then "
                                                       "sqlite file ./mlflow.db)")
    sw.add_argument("--experiment", default="emotune", help="MLflow experiment name")
    sw.add_argument("--resume", default=None, metavar="NAME",
                    help="finish the sweep NAME in --storage after its driver stopped (trials continue from checkpoints)")
    sw.add_argument("--optuna-storage", default=None,
                    help="Optuna RDB storage URL (default: sqlite file ./optuna.db; optuna-dashboard opens it)")
    sw.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept per trial (the best by objective)")
    sw.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial or worker from its last "
                                                                "checkpoint (a user error is not retried)")
    sw.add_argument("-v", "--verbose", action="count", default=0,
                    help="-v: other tools' output on the console (not in the sweep's log file) and Tune's status "
                         "tables; -vv: also every worker's log")
    sw.add_argument("--set", dest="overrides", action="append", type=_set_value, default=[],
                    metavar="KEY=VALUE", help="fix a trial setting or pin a searched parameter")


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: sqlite file ./mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment to look in (default: every experiment)")


def _mlflow_client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(_existing_store(uri))


def _existing_store(uri: str | None) -> str:
    """The tracking URI a reading command uses (``--mlflow-uri``, $MLFLOW_TRACKING_URI, ./mlflow.db), refused when it
    names a SQLite file that does not exist: MLflow would create an empty store there and then find nothing in it."""
    from cluster.stores import sqlite_path

    uri = _tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {uri}; give --mlflow-uri (the sweep's --mlflow-uri)")
    return uri


def cmd_report(a) -> int:
    from analysis.report import write_report
    from cluster.sweep import default_optuna_storage
    from cluster.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    client = _mlflow_client(a.mlflow_uri)
    report, sweep = write_report(client, a.sweep, a.out, a.optuna_storage or default_optuna_storage(),
                                 experiment=a.experiment)
    # The report is logged into the sweep's experiment: one created before emotune tagged experiments gets the tag
    # now, so MLflow's UI opens it on its runs.
    client.set_experiment_tag(client.get_run(sweep.parent_run_id).info.experiment_id, EXPERIMENT_KIND_TAG,
                              EXPERIMENT_KIND)
    say(f"report: {report}")
    say(f"logged to MLflow parent run {sweep.parent_run_id} under report/")
    return 0


def cmd_compare(a) -> int:
    from analysis.compare import compare

    say(compare(_mlflow_client(a.mlflow_uri), a.sweeps, a.out, experiment=a.experiment))
    return 0


def _tracking_uri(uri: str | None) -> str:
    from cluster.tracking import default_tracking_uri

    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def cmd_promote(a) -> int:
    from analysis.promote import promote

    uri = _existing_store(a.mlflow_uri)
    retrained = None
    if a.retrain_top:
        from mlflow.tracking import MlflowClient

        from analysis.promote import find_sweep
        from cluster.retrain import retrain_top

        client = MlflowClient(uri, registry_uri=uri)
        retrained = retrain_top(client, find_sweep(client, a.sweep).info.run_id, uri, a.retrain_top, a.seeds,
                                a.max_concurrent, ray_address=a.address)
    outcome = promote(a.sweep, uri, model_name=a.model_name, margin=a.margin, out_dir=a.out, retrained=retrained)
    say(outcome.message)
    if not outcome.promoted:
        return 1
    say(f"production.yaml: {outcome.yaml_path}")
    return 0


def cmd_predict(a) -> int:
    from analysis.promote import resolve_model
    from trainables.predict import predict_files

    remote = a.model.startswith(("runs:/", "models:/"))
    bundle = resolve_model(a.model, _existing_store(a.mlflow_uri) if remote else _tracking_uri(a.mlflow_uri))
    for csv, png, table in predict_files(bundle, a.videos, a.out, detector=a.detector, faces=a.faces):
        say(f"{csv}  {png}  ({len(table)} label steps, face on {100 * table['face'].mean():.1f}%)")
    return 0


def cmd_synth(a) -> int:
    from trainables.prepare.synth import synthesize

    try:
        manifest = synthesize(a.out, subjects=a.subjects, videos_per_subject=a.videos_per_subject, frames=a.frames,
                              fps=a.fps, size=a.size, lag_frames=a.lag_frames, variant=a.variant, seed=a.seed)
    except (ValueError, FileExistsError) as err:  # a setting out of range, or --out holds something else
        raise UserError(f"data synth: {err}") from None
    say(f"manifest: {manifest}")
    return 0


def cmd_prepare(a) -> int:
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare

    if a.weights_dir:
        os.environ["EMOTUNE_FACE_WEIGHTS"] = str(Path(a.weights_dir).resolve())  # read by the detector (and workers)
    reg = Registration(size=a.size, margin=a.margin, min_score=a.min_score, grayscale=a.grayscale,
                       detector=a.detector, align=a.align, fps=a.fps, smooth=a.smooth, face_detector=a.face_detector,
                       detect_width=a.detect_width, detect_every=a.detect_every)
    index, summary = prepare(a.manifest, a.cache, reg, workers=a.workers, index_path=a.index,
                             min_face_share=a.min_face_share, warn_face_share=a.warn_face_share)
    say("\n".join(summary.lines()))
    say(f"dataset index: {index}")
    return 0


def cmd_manifest(a) -> int:
    import warnings

    from trainables.prepare.splits import build_manifest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = build_manifest(a.videos, a.labels, label_format=a.format, subject_pattern=a.subject_pattern, out=a.out,
                             seed=a.seed, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
                             faces_dir=a.faces)
    for w in caught:
        warn(f"warning: {w.message}")
    say(f"manifest: {out}")
    return 0


def cmd_fetch_weights(a) -> int:
    from trainables.prepare.faces import fetch_weights

    for path in fetch_weights(a.to, detector=a.face_detector):
        say(path)
    return 0


def _print_outcome(outcome, max_epochs: int) -> dict[str, int]:
    from analysis.leaderboard import STATUSES, format_leaderboard, rows_from_results

    params = list(outcome.space.params)
    key = "epoch" if outcome.space.fidelity["attr"] == "epoch" else "step"
    rows = rows_from_results(outcome.results, outcome.space.metric, outcome.space.mode, params, max_epochs,
                             epoch_key=key)
    say()
    say(f"Leaderboard of sweep {outcome.name} ({len(rows)} trials, objective {outcome.space.metric}):")
    say(format_leaderboard(rows, outcome.space.metric, steps_label="epochs" if key == "epoch" else "reports"))
    say()
    say(f"MLflow store:  {outcome.tracking_uri}  (parent run {outcome.parent_run_id})")
    if outcome.tracking_uri.startswith("sqlite:///"):
        say(f"  open it with: mlflow ui --backend-store-uri {outcome.tracking_uri} --port 5000")
    say(f"Ray results:   {outcome.storage}/{outcome.name}")
    if outcome.best_trial_id:
        say(f"Best trial:    {outcome.best_trial_id} (checkpoint logged to MLflow run {outcome.best_run_id})")
    else:
        say("Best trial:    none (no trial finished without an error)")
    counts = {status: sum(r.status == status for r in rows) for status in STATUSES}
    say("Trials:        " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return counts


def sweep_exit_status(counts: dict[str, int]) -> int:
    """1 when any trial errored or none finished (complete or stopped early), else 0."""
    finished = counts["complete"] + counts["stopped early"]
    return 1 if counts["errored"] or not finished else 0


def cmd_sweep(a) -> int:
    from cluster.sweep import SweepOptions, run_sweep

    if not a.resume and not a.data:
        raise UserError("sweep: --data is required (the dataset index from `emotune data prepare`)")

    data = a.data or []
    if len(data) == 1 and "=" not in data[0]:
        data = data[0]
    else:
        data = dict(item.split("=", 1) for item in data) if all("=" in d for d in data) else data
        if isinstance(data, list):
            raise UserError("sweep: several --data need NAME=INDEX each (e.g. --data coarse=a.json --data fine=b.json)")
    opts = SweepOptions(space=a.space, data_index=data, num_samples=a.trials, max_concurrent=a.max_concurrent,
                        workers=a.workers, cpus_per_worker=a.cpus_per_worker, gpus_per_worker=a.gpus_per_worker,
                        storage=a.storage, name=a.name, seed=a.seed, time_budget_s=a.time_budget,
                        tracking_uri=a.mlflow_uri, experiment=a.experiment, overrides=dict(a.overrides),
                        resume=a.resume, optuna_storage=a.optuna_storage, keep_checkpoints=a.keep_checkpoints,
                        max_failures=a.max_failures, executor=a.executor, verbose=a.verbose, dry_run=a.dry_run,
                        epochs=a.epochs, ray_address=a.address)
    outcome = run_sweep(opts)
    if a.dry_run:
        return 0
    return sweep_exit_status(_print_outcome(outcome, int(outcome.space.fidelity["max"])))


def cmd_settings(a) -> int:
    from trainables.config import describe

    rows = [("setting", "group", "default", "allowed"), *describe()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def cmd_demo(a) -> int:
    """Synthesise, prepare, sweep, then the way to production: the sweep's report, promotion of its best trial (gated
    on the test subjects) and a prediction on a video of a subject the dataset does not hold."""
    from cluster.sweep import SweepOptions, default_optuna_storage, run_sweep
    from cluster.tracking import default_tracking_uri
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize

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
    status = sweep_exit_status(_print_outcome(outcome, int(outcome.space.fidelity["max"])))
    if status == 0:
        _demo_to_production(root, manifest, outcome.name, tracking_uri, optuna_storage)
    say(f"Demo finished in {time.time() - t0:.0f} s")
    return status


def _demo_to_production(root: Path, manifest: Path, sweep: str, tracking_uri: str, optuna_storage: str) -> None:
    import pandas as pd

    from analysis.promote import ALIAS, promote, resolve_model
    from analysis.report import write_report
    from trainables.objectives.metrics import regression_report
    from trainables.predict import predict_files
    from trainables.prepare.synth import synthesize_heldout

    say(f"[4/6] report of sweep {sweep}")
    report, _ = write_report(_mlflow_client(tracking_uri), sweep, root / "report", optuna_storage)
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


def main(argv: list[str] | None = None, *, quiet: bool = False) -> int:
    """Parse ``argv`` and run the command; returns its exit status. ``quiet`` (the ``emotune`` command without
    ``-v``): other tools' output goes to a log file, the console carries emotune's own lines (``trainables.console``).
    """
    args = build_parser().parse_args(argv)
    if quiet and args.command != "settings" and not getattr(args, "verbose", 0):
        console.divert()
        if args.command == "demo":
            console.log_to(Path(args.root) / "emotune.log")
    try:
        return _dispatch(args)
    except Exception as exc:
        if not console.diverted():
            raise
        # The traceback goes to the log with the rest of the libraries' output; the console gets one line.
        traceback.print_exc()
        if console.log_path() is None:
            console.log_to(Path.cwd() / "emotune.log")
        warn(f"emotune: error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
             f"(the traceback is in {console.log_path()})")
        return 1
    finally:
        if console.diverted() and console.log_path() is None and console.has_output():
            console.log_to(Path.cwd() / "emotune.log")  # something was said: keep it where the user is


def _dispatch(args) -> int:
    from search_spaces.schema import SpaceError

    handlers = {"synth": cmd_synth, "prepare": cmd_prepare, "manifest": cmd_manifest,
                "fetch-weights": cmd_fetch_weights}
    try:
        if args.command == "data":
            return handlers[args.data_command](args)
        if args.command in ("report", "compare"):
            return {"report": cmd_report, "compare": cmd_compare}[args.command](args)
        if args.command in ("promote", "predict"):
            return {"promote": cmd_promote, "predict": cmd_predict}[args.command](args)
        return {"sweep": cmd_sweep, "demo": cmd_demo, "settings": cmd_settings}[args.command](args)
    except (UserError, SpaceError) as err:
        # One line, no traceback: the message names what is wrong and what is allowed.
        warn(f"emotune: error: {' '.join(str(err).split())}")
        return 2
    except BrokenPipeError:  # the output went into a pipe that closed early (`emotune settings | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), console.out().fileno())
        return 0


def run() -> None:
    """The ``emotune`` command: :func:`main`, then a quick exit.

    Python's own teardown after a sweep (freeing the modules of torch, Ray, MLflow and SQLAlchemy one by one) took
    about 2 s here and does nothing the user needs. So the last exit handler (registered first, it runs after Ray's
    shutdown and every other handler) flushes the output and ends the process with the command's exit code. Every
    file the command writes is closed by then; a thread still running is waited for as usual, before the handlers.
    """
    import atexit

    # An uncaught exception (its traceback already printed) exits 1, as Python would; argparse's SystemExit (0 for
    # --help, 2 for a usage error) keeps its own code.
    code = {"rc": 1}

    def quick_exit() -> None:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr, console.out(), console.err()):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code["rc"])

    atexit.register(quick_exit)
    try:
        rc = main(quiet=True)
    except SystemExit as stop:
        rc = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    code["rc"] = rc if isinstance(rc, int) else 0
    sys.exit(code["rc"])


if __name__ == "__main__":
    run()
