"""Promotion of a sweep's best trial to production, and the model sources prediction reads.

``emotune promote SWEEP``: the best trial by the validation objective (the sweep's parent run tags
``emotune.best_trial`` / ``emotune.best_run_id``) is evaluated once on the test split's subjects (the split no sweep
ever sees), with a subject-level bootstrap 95% interval of the objective when the split has at least
:data:`MIN_SUBJECTS_FOR_INTERVAL` subjects (with fewer, no interval is computed, printed or stored). The model holding the registry alias
``production`` (if any) is scored on the same test videos. The candidate is promoted only when its test objective beats
the production one by more than ``margin`` (or no model holds the alias): it is logged as an MLflow pyfunc model
(:mod:`analysis.pyfunc_model`) bundling weights and every prediction setting, registered, given the alias, tagged with
its lineage, and its configuration is written to ``production.yaml``. Otherwise nothing changes and the refusal names
both figures.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import UserError
from trainables.provenance import git_commit

ALIAS = "production"
BOOTSTRAP_DRAWS = 1000
#: Fewest test subjects for which :func:`score` computes a bootstrap interval. The bootstrap resamples subjects with
#: replacement: n subjects have C(2n-1, n) distinct resamples, i.e. 1, 3 and 10 for 1, 2 and 3 subjects, so the 2.5th
#: and 97.5th percentiles of the draws are a few repeated values (one subject: the point value twice), not an
#: interval. With fewer subjects the score has no interval and says so instead of printing a degenerate one.
MIN_SUBJECTS_FOR_INTERVAL = 4


# ---------------------------------------------------------------------------------------------------------------------
# where models come from
@contextlib.contextmanager
def mlflow_uris(uri: str | None):
    """MLflow's fluent API (``log_model``, ``register_model``, ``models:/`` downloads) pointed at ``uri`` for tracking
    and registry inside the block; the process's own settings (set or unset) are restored after it."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for subprocesses:
    # those are restored too, or every later subprocess of this process would talk to ``uri``.
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_env = {k: os.environ.get(k) for k in env_keys}
    try:
        if uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def resolve_model(source: str, tracking_uri: str | None = None):
    """A :class:`trainables.predict.ModelBundle` from ``runs:/<run_id>`` (a trial's best checkpoint),
    ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (a promoted model) or a local ``state.pt`` /
    bundle file.

    A download goes into a temporary folder removed before this returns: :func:`~trainables.predict.load_bundle`
    reads the whole file into memory (``torch.load`` without ``mmap``), so the bundle needs no file afterwards.

    Raises:
        UserError: the run, model or file does not exist or holds no emotune checkpoint.
    """
    from trainables.predict import load_bundle

    if source.startswith("runs:/"):
        from mlflow.tracking import MlflowClient

        run_id = source[len("runs:/"):].strip("/").split("/")[0]
        with tempfile.TemporaryDirectory(prefix="emotune-model-") as tmp:
            try:
                path = MlflowClient(tracking_uri).download_artifacts(run_id, "checkpoint/state.pt", tmp)
            except Exception as exc:
                raise UserError(f"model {source}: no checkpoint/state.pt in that MLflow run "
                                f"({' '.join(str(exc).split())[:200]})") from None
            return load_bundle(path)
    if source.startswith("models:/"):
        with tempfile.TemporaryDirectory(prefix="emotune-model-") as tmp:
            return load_bundle(download_registered(source, tracking_uri, tmp))
    return load_bundle(source)


def download_registered(uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The bundle file of a registered model (``models:/name@alias``), downloaded into the existing folder ``dst``
    (the caller's to remove)."""
    import mlflow.artifacts

    try:
        with mlflow_uris(tracking_uri):
            folder = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri,
                                                         dst_path=str(dst))
    except Exception as exc:
        raise UserError(f"model {uri} cannot be found in the MLflow registry ({' '.join(str(exc).split())[:200]})") \
            from None
    found = sorted(Path(folder).rglob("bundle.pt"))
    if not found:
        raise UserError(f"model {uri} is not an emotune model (no bundle.pt in its artifacts)")
    return found[0]


# ---------------------------------------------------------------------------------------------------------------------
# scoring on the test split
def objective_name(config: dict) -> tuple[str, str]:
    """(metric key of ``regression_report``, mode) from the trial's objective (``val_ccc_mean`` -> ``ccc_mean``)."""
    metric = str(config.get("metric") or "val_ccc_mean")
    return metric[4:] if metric.startswith("val_") else metric, str(config.get("mode") or "max")


def predict_cached(bundle, videos: list) -> dict[str, np.ndarray]:
    """Post-processed predictions (L, D) on the label timeline of each cached video, as the trial scored validation."""
    from trainables.data.augment import build_eval_transform
    from trainables.loop import evaluate
    from trainables.objectives.postprocess import PostProcess

    cfg = bundle.trial_config()
    model = bundle.build_model()
    frame_hw = tuple(videos[0].frames.shape[1:3])
    _, preds = evaluate(model, videos, cfg.clip_spec(), __import__("torch").device("cpu"), seed=cfg.seed,
                        transform=build_eval_transform(cfg.augmentations(), frame_size=frame_hw),
                        multiplier=cfg.target_multiplier, faceless=cfg.faceless)
    if bundle.postprocess:
        post = PostProcess.from_dict(bundle.postprocess)
        preds = {vid: post.apply(p) for vid, p in preds.items()}
    return preds


def scored_labels(bundle, videos: list) -> dict[str, np.ndarray]:
    """The test targets as the model's trials scored validation (Aff-Wild2's rule leaves the steps before a video's
    first face unscored)."""
    from trainables.loop import scored_targets

    return scored_targets(videos, bundle.trial_config().faceless)


@dataclass
class TestScore:
    """A model's objective on the test split, with a subject-level bootstrap 95% interval (``low`` and ``high`` are
    None when the split has fewer than :data:`MIN_SUBJECTS_FOR_INTERVAL` subjects)."""

    value: float
    low: float | None
    high: float | None
    metrics: dict = field(default_factory=dict)
    subjects: int = 0

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self) -> str:
        if not self.has_interval:
            return f"{self.value:.4f} (no interval: {self.subjects} test subject(s))"
        return f"{self.value:.4f} (95% CI {self.low:.4f}..{self.high:.4f}, {self.subjects} test subject(s))"


def score(videos: list, subjects: dict[str, str], preds: dict[str, np.ndarray], key: str, seed: int = 0,
          draws: int = BOOTSTRAP_DRAWS, truth: dict[str, np.ndarray] | None = None) -> TestScore:
    """``key`` of the regression report over every label step of ``videos`` and its bootstrap interval over subjects
    (subjects drawn with replacement, all their videos' steps concatenated); no interval with fewer than
    :data:`MIN_SUBJECTS_FOR_INTERVAL` subjects. ``truth``: the targets per video (default each video's labels; NaN
    steps are not scored)."""
    from trainables.objectives.metrics import regression_report

    dims = ("valence", "arousal")[: videos[0].labels.shape[1]]

    def report(chosen: list) -> dict:
        return regression_report(np.concatenate([(truth or {}).get(v.video_id, v.labels) for v in chosen]),
                                 np.concatenate([preds[v.video_id] for v in chosen]), dims=dims)

    metrics = report(videos)
    by_subject: dict[str, list] = {}
    for v in videos:
        by_subject.setdefault(subjects.get(v.video_id, v.video_id), []).append(v)
    groups = list(by_subject.values())
    if len(groups) < MIN_SUBJECTS_FOR_INTERVAL:
        return TestScore(float(metrics[key]), None, None, metrics, len(groups))
    rng = np.random.default_rng(seed)
    values = [report([v for g in rng.integers(0, len(groups), len(groups)) for v in groups[g]])[key]
              for _ in range(draws)]
    low, high = np.percentile(values, [2.5, 97.5])
    return TestScore(float(metrics[key]), float(low), float(high), metrics, len(groups))


def test_split(index_path: str) -> tuple[list, dict[str, str]]:
    """(cached test videos, video id -> subject) of a dataset index."""
    from trainables.data.cache import load_split

    videos = load_split(index_path, "test")
    index = json.loads(Path(index_path).read_text())
    return videos, {v["video_id"]: v["subject"] for v in index["videos"]}


# ---------------------------------------------------------------------------------------------------------------------
# the sweep and the registry
def find_sweep(client, sweep: str):
    """The parent run of sweep ``sweep`` (its name or its run id), found as reports and comparisons find it
    (:func:`analysis.sweeps.resolve_sweep`: never a promotion's or a retraining's run).

    Raises:
        UserError: no such sweep, or it has no best trial.
    """
    from analysis.sweeps import resolve_sweep

    run = resolve_sweep(client, sweep)
    if not run.data.tags.get("emotune.best_run_id"):
        raise UserError(f"sweep {sweep!r} has no best trial (no trial finished without an error)")
    return run


def production_version(client, name: str):
    """The model version holding the ``production`` alias, or None."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except Exception:
        return None


@dataclass
class Outcome:
    promoted: bool
    candidate: TestScore
    production: TestScore | None
    message: str
    version: str | None = None
    yaml_path: Path | None = None


def promote(sweep: str, tracking_uri: str | None = None, model_name: str = "emotune", margin: float = 0.0,
            out_dir: str | Path = ".", retrained: Any = None) -> Outcome:
    """Evaluate the sweep's best trial on the test subjects and promote it if it beats production by ``margin``.

    ``retrained``: the outcome of :func:`cluster.retrain.retrain_top` (the sweep's K best configurations trained
    again with fresh seeds, the best mean over seeds; ``emotune promote --retrain-top``), whose chosen run is the
    candidate instead of the sweep's best trial. Retraining runs trials on Ray, so it is driven from ``cluster``; this
    module only scores, registers and records.

    Raises:
        UserError: no such sweep or checkpoint; the production model was trained on another face registration
            (it cannot be scored on the same cached test videos).
    """
    import yaml
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    parent = find_sweep(client, sweep)
    run_id, trial = parent.data.tags["emotune.best_run_id"], parent.data.tags.get("emotune.best_trial", "")
    if retrained is not None:
        run_id, trial = retrained.run_id, retrained.chosen.trial_id
    candidate = resolve_model(f"runs:/{run_id}", tracking_uri)
    index_path = candidate.config.get("data_index") or \
        (candidate.config.get("data_indexes") or {}).get(candidate.config.get("registration"))
    videos, subjects = test_split(index_path)
    key, mode = objective_name(candidate.config)
    cand = score(videos, subjects, predict_cached(candidate, videos), key, truth=scored_labels(candidate, videos))

    current = production_version(client, model_name)
    prod = None
    if current is not None:
        held = resolve_model(f"models:/{model_name}/{current.version}", tracking_uri)
        if {k: v for k, v in held.registration.items() if k != "detector"} != \
                {k: v for k, v in candidate.registration.items() if k != "detector"}:
            raise UserError(f"the production model ({model_name} version {current.version}) was trained on another "
                            f"face registration ({held.registration}) than trial {trial} "
                            f"({candidate.registration}); both must be scored on the same cached test videos")
        prod = score(videos, subjects, predict_cached(held, videos), key, truth=scored_labels(held, videos))
        gain = (cand.value - prod.value) if mode == "max" else (prod.value - cand.value)
        if not gain > margin:
            return Outcome(False, cand, prod, _retrain_text(retrained) + (
                f"not promoted: trial {trial} scores test {key} {cand.text()}, the production model "
                f"({model_name} version {current.version}) scores {prod.text()} on the same test subjects; "
                f"it must be better by more than --margin {margin:g}; the alias {ALIAS!r} stays on version "
                f"{current.version}"))

    lineage = {"emotune.sweep": parent.data.tags["emotune.sweep"], "emotune.sweep_run_id": parent.info.run_id,
               "emotune.trial": trial, "emotune.trial_run_id": run_id,
               "emotune.data_index": str(index_path),
               "emotune.data_index_sha1": parent.data.params.get("data_index_sha1", ""),
               "emotune.sweep_git_commit": parent.data.tags.get("emotune.git_commit", ""),
               "emotune.git_commit": git_commit(), f"emotune.test_{key}": f"{cand.value:.6f}",
               "emotune.test_subjects": str(cand.subjects)}
    if cand.has_interval:  # too few test subjects: no interval tag at all (never a NaN or a degenerate one)
        lineage[f"emotune.test_{key}_ci95"] = f"{cand.low:.6f},{cand.high:.6f}"
    if retrained is not None:
        lineage.update({"emotune.retrain_run_id": retrained.parent_run_id, "emotune.retrain_seed": str(retrained.seed),
                        f"emotune.retrain_{retrained.metric}_mean": f"{retrained.chosen.mean:.6f}",
                        f"emotune.retrain_{retrained.metric}_std": f"{retrained.chosen.std:.6f}"})
    production = {"model": model_name, "alias": ALIAS, "sweep": lineage["emotune.sweep"], "trial": trial,
                  "trial_run_id": run_id, "data_index": str(index_path),
                  "data_index_sha1": lineage["emotune.data_index_sha1"], "git_commit": lineage["emotune.git_commit"],
                  "test": {"objective": key, "value": cand.value,
                           **({"ci95": [cand.low, cand.high]} if cand.has_interval else {}),
                           "subjects": cand.subjects},
                  "previous": None if current is None else {"version": current.version, "value": prod.value},
                  "retrain": None if retrained is None else {
                      "run_id": retrained.parent_run_id, "seed": retrained.seed, "candidate_run_id": retrained.run_id,
                      "configurations": {c.trial_id: {"mean": c.mean, "std": c.std, "values": c.values}
                                         for c in retrained.configs}},
                  **candidate.settings()}
    version = register(client, tracking_uri, candidate, model_name, lineage, production,
                       experiment_id=parent.info.experiment_id)
    production["version"] = version
    yaml_path = Path(out_dir) / "production.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(yaml.safe_dump(production, sort_keys=False))
    before = "no model held it" if prod is None else \
        f"version {current.version} scored {prod.text()} on the same test subjects"
    return Outcome(True, cand, prod, _retrain_text(retrained) + (f"promoted: trial {trial} of sweep {lineage['emotune.sweep']} scores test {key} "
                                      f"{cand.text()}; {model_name} version {version} now holds the alias {ALIAS!r} "
                                      f"({before})"), version, yaml_path)


def _retrain_text(retrained) -> str:
    return "" if retrained is None else "\n".join(retrained.lines()) + "\n"


def register(client, tracking_uri: str | None, bundle, model_name: str, tags: dict, production: dict,
             experiment_id: str, alias: str = ALIAS) -> str:
    """Log ``bundle`` as a pyfunc model in a new run, register it as ``model_name`` and give it ``alias``; returns
    the version."""
    import mlflow
    import yaml

    import warnings

    from analysis import pyfunc_model

    with tempfile.TemporaryDirectory(prefix="emotune-promote-") as tmp:
        bundle_path = bundle.save(Path(tmp) / "bundle.pt")
        (Path(tmp) / "production.yaml").write_text(yaml.safe_dump(production, sort_keys=False))
        run = client.create_run(experiment_id, run_name=f"promote-{tags.get('emotune.trial', '')}",
                                tags={**tags, "emotune.promotion": "true"})
        with mlflow_uris(tracking_uri), mlflow.start_run(run_id=run.info.run_id), warnings.catch_warnings():
            # MLflow suggests an input example; the signature (a ``video`` column of paths, the ``detector`` param)
            # already states the input, and an example would have to be a real video.
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            mlflow.log_dict(production, "production.json")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=pyfunc_model.__file__,
                artifacts={"bundle": str(bundle_path), "production": str(Path(tmp) / "production.yaml")},
                signature=pyfunc_model.signature(), pip_requirements=["emotune"])
    with mlflow_uris(tracking_uri):
        mv = mlflow.register_model(info.model_uri, model_name, tags=tags)
    client.set_registered_model_alias(model_name, alias, mv.version)
    return str(mv.version)


def force_production(bundle, tracking_uri: str, model_name: str = "emotune", experiment: str = "emotune",
                     tags: dict[str, Any] | None = None) -> str:
    """Register ``bundle`` and give it the alias without any gate (a first baseline, tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    return register(client, tracking_uri, bundle, model_name, dict(tags or {}), {"forced": True}, exp_id)
