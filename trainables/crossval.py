"""Cross-validated trials: one configuration trained and scored on each subject fold of the sweep in turn
(:func:`fit_folds`), and the refit of a chosen configuration on every non-test subject (:func:`refit`, what promoting a
CV sweep trains).

A CV trial runs folds 1..K in that order (the sweep's :class:`~trainables.prepare.folds.FoldPlan`), each from a fresh
model for the trial's epochs E, reporting once per fold-epoch. Per fold, as a one-split trial does: metrics on the
canonical label timeline of the fold's validation subjects, post-processing fitted on that fold's validation predictions
(SPEC, evaluation rules 2 and 3). A fold's score is its best epoch's value of the objective (judgment call: the
epoch a one-split sweep would keep, and the epoch count the refit takes the median of).

Result keys of a CV trial (fixed; the README lists them):

* ``fold`` (1..K), ``fold_epoch`` (1..E), ``fold_epochs`` = (fold - 1) E + fold_epoch (the trial's progress: the
  scheduler's time axis), ``folds_done`` (folds finished, this one included once its last epoch is reported);
* ``fold_val_*``: this epoch's metrics on the fold's validation subjects (what ``val_*`` holds in a one-split trial);
  ``fold_best``: the best objective of the current fold so far (at its last epoch: the fold's score);
* the objective (e.g. ``val_ccc_mean``) and ``cv_mean_so_far``: the mean over the folds so far of their scores, the
  current fold counted by its ``fold_best``; trials are compared on it only at equal ``fold_epochs`` (the same folds);
* after the last fold: ``cv_mean`` (the objective: the mean over folds of each fold's score), ``cv_sd`` (sample sd
  over folds), ``cv_pooled_val_*`` (metrics of the pooled out-of-fold predictions: every fold's best epoch,
  post-processed, concatenated) and ``cv_best_epoch_median``.

The checkpoint after every fold-epoch holds the fold record (:class:`FoldRecord`) beside the weights, so a trial
restarted (a crash, a resumed sweep) continues in the fold it was in and never trains a finished fold again; the last
one also holds ``cv_postprocess.json``: the post-processing fitted on the pooled out-of-fold predictions, which the
refit's model uses.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.loop import (Trial, build_trial, report_diverged, report_with_checkpoint, restore, resume_unit,
                             score_unit, scored_targets, start_epoch, train_unit, trial_state)
from trainables.objectives.metrics import regression_report
from trainables.objectives.postprocess import PostProcess, compute_stats, search_postprocess
from trainables.prepare.folds import CV_SPLITS, FoldPlan, fold_split

__all__ = ["FoldRecord", "fit_folds", "refit"]


def _better(mode: str):
    return (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)


@dataclass
class FoldRecord:
    """What a CV trial knows of its folds: the finished folds' scores and best epochs, the out-of-fold predictions
    of their best epochs (raw and post-processed, with the targets they are scored on), and the current fold's best."""

    scores: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    pred_stats: list[dict] = field(default_factory=list)  # per finished fold: its best epoch's training predictions
    oof_raw: dict[str, np.ndarray] = field(default_factory=dict)
    oof_post: dict[str, np.ndarray] = field(default_factory=dict)
    oof_true: dict[str, np.ndarray] = field(default_factory=dict)
    best: float | None = None  # the current fold's best value so far, its epoch and predictions
    best_epoch: int = 0
    best_raw: dict[str, np.ndarray] = field(default_factory=dict)
    best_post: dict[str, np.ndarray] = field(default_factory=dict)
    best_stats: dict | None = None

    def observe(self, value: float, epoch: int, raw: dict, post: dict, stats: dict | None, mode: str) -> None:
        """One epoch of the current fold; keeps it when it is the fold's best (ties: the earlier epoch)."""
        if self.best is None or _better(mode)(value, self.best):
            self.best, self.best_epoch, self.best_raw, self.best_post, self.best_stats = value, epoch, raw, post, stats

    def end_fold(self, truth: dict[str, np.ndarray]) -> None:
        """The current fold is finished: its best becomes its score and its out-of-fold predictions."""
        self.scores.append(float(self.best))
        self.best_epochs.append(self.best_epoch)
        if self.best_stats is not None:
            self.pred_stats.append(self.best_stats)
        self.oof_raw.update(self.best_raw)
        self.oof_post.update(self.best_post)
        self.oof_true.update({vid: truth[vid] for vid in self.best_post})
        self.best, self.best_epoch, self.best_raw, self.best_post, self.best_stats = None, 0, {}, {}, None

    def mean_so_far(self) -> float:
        values = self.scores + ([self.best] if self.best is not None else [])
        return float(np.mean(values))

    # A checkpoint is read back with weights_only: arrays travel as tensors.
    def to_state(self) -> dict:
        def tensors(d: dict) -> dict:
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}

        return {"scores": list(self.scores), "best_epochs": list(self.best_epochs), "pred_stats": list(self.pred_stats),
                "oof_raw": tensors(self.oof_raw), "oof_post": tensors(self.oof_post),
                "oof_true": tensors(self.oof_true), "best": self.best, "best_epoch": self.best_epoch,
                "best_raw": tensors(self.best_raw), "best_post": tensors(self.best_post),
                "best_stats": self.best_stats}

    @classmethod
    def from_state(cls, state: dict) -> "FoldRecord":
        def arrays(d: dict) -> dict:
            return {k: v.cpu().numpy() for k, v in d.items()}

        return cls(scores=list(state["scores"]), best_epochs=list(state["best_epochs"]),
                   pred_stats=list(state["pred_stats"]), oof_raw=arrays(state["oof_raw"]),
                   oof_post=arrays(state["oof_post"]), oof_true=arrays(state["oof_true"]), best=state["best"],
                   best_epoch=int(state["best_epoch"]), best_raw=arrays(state["best_raw"]),
                   best_post=arrays(state["best_post"]), best_stats=state["best_stats"])


def fit_folds(cfg: TrialConfig, session) -> None:
    """Train and score one configuration on every fold of ``cfg.cv`` in turn (module docstring)."""
    plan = FoldPlan.from_config(cfg.cv)
    if cfg.reports_per_epoch != 1:
        raise ValueError("a cross-validated trial reports once per fold-epoch (fidelity attr epoch)")
    epochs = cfg.max_units or cfg.epochs
    state = session.load_state(session.device)
    record = FoldRecord.from_state(state["cv"]) if state is not None and "cv" in state else FoldRecord()
    fold, done = (int(state["cv_fold"]), int(state["unit"])) if state is not None and "cv" in state else (1, 0)
    if done >= epochs:  # the checkpoint ends a fold: the next one starts afresh
        fold, done, state = fold + 1, 0, None
    label_stats, costs = None, None
    session.marks["built_at"] = time.time()
    while fold <= plan.k:
        train, val = fold_split(cfg.index_path, plan, fold)
        if label_stats is None:  # the labels of every non-test subject: what the pooled post-processing scales to
            label_stats = compute_stats(np.concatenate([v.labels for v in train + val]))
        # The same architecture and input shape on every fold: its costs are measured on the first fold built.
        t = build_trial(cfg, session, videos=(train, val), costs=costs)
        costs = t.costs
        if state is not None:
            restore(t, state)
            state = None
        while done < epochs:
            t0 = time.perf_counter()
            result = _train_epoch(t, done)
            if result.stopped:
                return
            done += 1
            keys = {"fold": fold, "fold_epoch": done, "fold_epochs": (fold - 1) * epochs + done,
                    "folds_done": fold - 1 + (done == epochs)}
            progress, scored = score_unit(t, done, 1, result, t0)
            if scored is None:
                report_diverged(t, {**progress, **keys})
                return
            _report_fold(t, plan, record, scored, keys, epochs, label_stats)
        fold, done = fold + 1, 0


def _train_epoch(t: Trial, epoch: int):
    """Every batch of epoch ``epoch`` (0-based), in the order a one-split trial takes them."""
    start_epoch(t.train_set, t.loader, t.generator, t.config.seed, epoch)
    return train_unit(t, iter(t.loader), len(t.loader))


def _report_fold(t: Trial, plan: FoldPlan, record: FoldRecord, scored, keys: dict, epochs: int,
                 label_stats: dict) -> None:
    """Report one fold-epoch with its checkpoint."""
    cfg = t.config
    metric = cfg.metric
    value = float(scored.report[metric])
    record.observe(value, keys["fold_epoch"], scored.raw, scored.preds, scored.pred_stats, cfg.mode)
    report = {k: v for k, v in scored.report.items() if not k.startswith("val_")}
    report.update({f"fold_{k}": v for k, v in scored.report.items() if k.startswith("val_")})
    report.update(keys, epoch=keys["fold_epoch"], fold_best=record.best, fold_best_epoch=record.best_epoch)
    extra = {}
    if keys["fold_epoch"] == epochs:
        record.end_fold(scored_targets(t.val_videos, cfg.faceless))
    report["cv_mean_so_far"] = report[metric] = record.mean_so_far()
    if len(record.scores) == plan.k and keys["fold_epoch"] == epochs:
        report.update(_cv_summary(t, record))
        report[metric] = report["cv_mean"]
        if cfg.postprocess:
            stats = _mean_stats(record.pred_stats)
            pooled, _ = search_postprocess(record.oof_raw, record.oof_true, label_stats, stats, dims=t.dims)
            extra["cv_postprocess.json"] = pooled.to_dict()
    state = {**trial_state(t, keys["fold_epoch"], 1, scored.post), "cv": record.to_state(), "cv_fold": keys["fold"]}
    report_with_checkpoint(t.session, report, state, scored.preds, scored.post, extra=extra)


def _cv_summary(t: Trial, record: FoldRecord) -> dict[str, float]:
    """The trial's CV figures once every fold is done (module docstring)."""
    videos = sorted(record.oof_post)
    pooled = regression_report(np.concatenate([record.oof_true[v] for v in videos]),
                               np.concatenate([record.oof_post[v] for v in videos]), dims=t.dims)
    return {"cv_mean": float(np.mean(record.scores)),
            "cv_sd": float(statistics.stdev(record.scores)) if len(record.scores) > 1 else 0.0,
            "cv_best_epoch_median": float(statistics.median(record.best_epochs)),
            **{f"cv_pooled_val_{k}": float(v) for k, v in pooled.items() if isinstance(v, (int, float))}}


def _mean_stats(stats: list[dict]) -> dict | None:
    """The folds' training-prediction statistics, averaged per dimension (judgment call: the pooled post-processing
    has no single training set; each fold's statistics describe the same model family on 1 - 1/K of the subjects)."""
    if not stats:
        return None
    return {key: np.mean([s[key] for s in stats], axis=0).tolist() for key in ("mean", "std")}


def refit(cfg: TrialConfig, session) -> None:
    """Train the configuration on every non-test subject (the index's train and val splits) for ``cfg.refit["epochs"]``
    epochs, with nothing to validate on; each epoch's report carries the configuration's CV objective
    (``cfg.refit["value"]``) and a checkpoint whose post-processing is the one fitted on the CV trial's pooled
    out-of-fold predictions (``cfg.refit["postprocess"]``)."""
    from trainables.data.cache import load_split

    epochs = int(cfg.refit["epochs"])
    post = PostProcess.from_dict(cfg.refit.get("postprocess") or {})
    videos = [v for split in CV_SPLITS for v in load_split(cfg.index_path, split, missing_ok=True)]
    t = build_trial(cfg, session, videos=(videos, []), costs={})  # a refit reports no costs
    done = resume_unit(t, 1)
    session.marks["built_at"] = time.time()
    while done < epochs:
        t0 = time.perf_counter()
        result = _train_epoch(t, done)
        if result.stopped:
            return
        done += 1
        if result.diverged:
            report_diverged(t, {"epoch": done})
            return
        report = {"epoch": done, "step": done, "train_loss": float(np.mean(result.losses)) if result.losses else math.nan,
                  "epoch_time_s": time.perf_counter() - t0, "train_time_s": result.train_time,
                  cfg.metric: float(cfg.refit.get("value", math.nan)), "refit": 1}
        report_with_checkpoint(session, report, trial_state(t, done, 1, post), {}, post)

