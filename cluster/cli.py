"""The ``emotune`` command line: its parser, and the dispatch of each command to its handler, which lives with the room
that does the work (:data:`HANDLERS`): ``data ...`` in ``trainables.prepare.commands``; ``sweep``, ``settings`` and
``promote`` (which may retrain on Ray) in ``cluster.commands``; ``demo`` in ``cluster.demo``; ``report``, ``compare``
and ``predict`` in ``analysis.commands``.

A user error (a setting, a file, a resource request; ``trainables.errors.UserError`` and
``search_spaces.schema.SpaceError``) is printed as one line, ``emotune: error: <message>``, with exit status 2. A sweep
exits 1 when a trial errored or no trial finished.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from trainables import console
from trainables.console import warn
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


def _constraint(text: str):
    from analysis.constraints import parse_constraint

    try:
        return parse_constraint(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    s.add_argument("--labelled-train-subjects", type=int, default=None, metavar="N",
                   help="label only the first N train subjects; the others' videos are unlabelled (for pretraining)")

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

    pt = sub.add_parser("pretrain", help="pretrain an encoder without labels (a study with kind: pretrain), as a "
                                         "sweep or one run, and register the best as a model")
    _sweep_args(pt)
    pt.set_defaults(space="pretrain_smoke", trials=1)
    pt.add_argument("--data", default=None, action="append", metavar="INDEX",
                    help="dataset index written by `emotune data prepare` (its train split's videos, labelled or "
                         "not, are pretrained on; its labelled train and val videos train and score the probe)")
    pt.add_argument("--dry-run", action="store_true", help="check every configuration, then stop")
    pt.add_argument("--register-as", default="emotune-pretrained", metavar="NAME",
                    help="registered model the best encoder becomes a new version of (default: emotune-pretrained)")
    pt.add_argument("--alias", default="current", help="alias given to that version (default: current; MLflow "
                                                        "reserves 'latest')")

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
    pm.add_argument("sweep", metavar="SWEEP", nargs="?", default=None,
                    help="sweep name or its MLflow parent run id (not with --history)")
    pm.add_argument("--constraint", dest="constraints", action="append", type=_constraint, default=[],
                    metavar="NAME<OP>NUMBER",
                    help="promote the best complete trial by the first objective among those meeting this, e.g. "
                         "'gflops<=2' (op: <=, <, >=, >; name: a measured cost params_m, gflops, infer_ms, train_s, "
                         "peak_mem_mb, or a validation metric such as val_ccc_arousal); repeat for several")
    pm.add_argument("--history", action="store_true",
                    help="print every recorded move of the model's alias (time, sweep, trial, test score, costs, the "
                         "version it replaced) and stop")
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
    sw.add_argument("--folds", type=int, default=None, metavar="K",
                    help="score every configuration by subject K-fold cross-validation over the train and val "
                         "subjects (the test subjects stay unseen); default: the study's cv.folds, else one split")
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

    try:
        return _handler(args)(args)
    except (UserError, SpaceError) as err:
        # One line, no traceback: the message names what is wrong and what is allowed.
        warn(f"emotune: error: {' '.join(str(err).split())}")
        return 2
    except BrokenPipeError:  # the output went into a pipe that closed early (`emotune settings | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), console.out().fileno())
        return 0


#: Where each command's handler lives (module, function): with the room that does its work. Imported when the
#: command runs, so a command loads only its own room's modules.
HANDLERS: dict[str, tuple[str, str]] = {
    "data synth": ("trainables.prepare.commands", "cmd_synth"),
    "data prepare": ("trainables.prepare.commands", "cmd_prepare"),
    "data manifest": ("trainables.prepare.commands", "cmd_manifest"),
    "data fetch-weights": ("trainables.prepare.commands", "cmd_fetch_weights"),
    "sweep": ("cluster.commands", "cmd_sweep"),
    "pretrain": ("cluster.commands", "cmd_pretrain"),
    "settings": ("cluster.commands", "cmd_settings"),
    "promote": ("cluster.commands", "cmd_promote"),
    "demo": ("cluster.demo", "cmd_demo"),
    "report": ("analysis.commands", "cmd_report"),
    "compare": ("analysis.commands", "cmd_compare"),
    "predict": ("analysis.commands", "cmd_predict"),
}


def _handler(args):
    import importlib

    command = f"data {args.data_command}" if args.command == "data" else args.command
    module, name = HANDLERS[command]
    return getattr(importlib.import_module(module), name)


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
