"""Subject K-fold cross-validation of a sweep: which subjects validate in each fold, and the videos of one fold.

SPEC "Evaluation protocol" 1: folds are subject-grouped, and the test subjects are never used. A CV study re-splits the
dataset's train and validation subjects (the index's ``train`` and ``val`` splits together) into K subject-disjoint
folds with :func:`trainables.prepare.splits.kfold` (a keyed hash of the seed and the subject: the same folds on every
machine), unless the manifest gives each video a ``fold`` (1..K): then those folds are used as given.

The plan is made once, by the sweep's driver before any trial starts (:func:`plan_folds`, which refuses a plan that
cannot work: K < 2, K above the subjects, a subject in two folds, a fold without one valid face frame), recorded on the
sweep's parent run and handed to every trial in its config (``cv``), so every trial and every fold of a resumed sweep
sees the same assignment. Torch-free: the driver imports it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.cache import cache_root, is_labelled, read_index
from trainables.errors import DataError, UserError

__all__ = ["FoldPlan", "fold_split", "plan_folds"]

CV_SPLITS = ("train", "val")  # the splits a CV study re-splits; "test" stays unseen


@dataclass(frozen=True)
class FoldPlan:
    """The validation subjects of each fold, in the order the folds run."""

    folds: tuple[tuple[str, ...], ...]
    source: str  # how it was made: "kfold seed=S" or "manifest fold column"

    @property
    def k(self) -> int:
        return len(self.folds)

    def to_config(self) -> dict[str, Any]:
        """The trial config's ``cv`` entry (JSON-friendly)."""
        return {"folds": [list(f) for f in self.folds], "source": self.source}

    @classmethod
    def from_config(cls, cv: dict[str, Any]) -> "FoldPlan":
        return cls(tuple(tuple(f) for f in cv["folds"]), str(cv.get("source", "")))

    def describe(self) -> str:
        return "; ".join(f"fold {i}: {', '.join(f)}" for i, f in enumerate(self.folds, start=1))


def plan_folds(index_path: str | Path, k: int, seed: int = 0) -> FoldPlan:
    """The folds of a CV sweep over the index's non-test subjects.

    Raises:
        UserError: one line naming the counts: K < 2, K above the non-test subjects, manifest folds that put a subject
            in two folds, miss some videos or do not number K, or a fold whose videos hold no valid face frame.
    """
    from trainables.prepare.splits import kfold

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UserError(f"cross-validation needs at least 2 folds; got {k!r}")
    index = read_index(index_path)
    # Unlabelled videos (pretraining only) are never validated on: their subjects take no part in the folds.
    videos = [v for v in index["videos"] if v["split"] in CV_SPLITS and is_labelled(v)]
    subjects = sorted({v["subject"] for v in videos})
    test = sorted({v["subject"] for v in index["videos"] if v["split"] == "test"})
    if k > len(subjects):
        raise UserError(f"{k} folds need at least {k} non-test subjects; the dataset index {index_path} has "
                        f"{len(subjects)} (train and val; {len(test)} test subject(s) are never used)")
    given = [v for v in videos if v.get("fold") is not None]
    if given:
        plan = _manifest_folds(videos, k, index_path)
    else:
        plan = FoldPlan(tuple(tuple(sorted(s for s, part in fold.items() if part == "val"))
                              for fold in kfold(subjects, k, seed=seed)), f"kfold seed={seed}")
    _check_faces(index, index_path, videos, plan)
    return plan


def _manifest_folds(videos: list[dict], k: int, index_path) -> FoldPlan:
    missing = [v["video_id"] for v in videos if v.get("fold") is None]
    if missing:
        raise UserError(f"the manifest's fold column is empty for {len(missing)} of {len(videos)} non-test videos "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); give every train and val "
                        "video a fold, or none")
    by_subject: dict[str, set[int]] = defaultdict(set)
    for v in videos:
        by_subject[v["subject"]].add(int(v["fold"]))
    split = {s: sorted(f) for s, f in by_subject.items() if len(f) > 1}
    if split:
        s, f = next(iter(sorted(split.items())))
        raise UserError(f"the manifest's fold column puts {len(split)} subject(s) in two or more folds (subject {s!r} "
                        f"in folds {', '.join(map(str, f))}); a subject's videos must share one fold")
    numbers = sorted({next(iter(f)) for f in by_subject.values()})
    if numbers != list(range(1, k + 1)):
        raise UserError(f"the manifest's fold column holds folds {', '.join(map(str, numbers))} but the sweep asks "
                        f"for {k} folds (1..{k}); give --folds {len(numbers)} or renumber the folds 1..K")
    folds = tuple(tuple(sorted(s for s, f in by_subject.items() if next(iter(f)) == n)) for n in numbers)
    return FoldPlan(folds, "manifest fold column")


def _check_faces(index: dict, index_path, videos: list[dict], plan: FoldPlan) -> None:
    """Each fold must hold a valid face frame: a fold whose validation videos have none cannot be scored."""
    root = cache_root(index, index_path)
    for number, subjects in enumerate(plan.folds, start=1):
        mine = [v for v in videos if v["subject"] in subjects]
        frames = sum(int(np.load(root / v["entry"] / "valid.npy").sum()) for v in mine)
        if frames == 0:
            raise UserError(f"fold {number} of {plan.k} (subjects {', '.join(subjects)}) has no valid face frame in "
                            f"its {len(mine)} video(s); it cannot be trained or scored: choose other folds")


def fold_split(index_path: str | Path, plan: FoldPlan, fold: int) -> tuple[list, list]:
    """(training videos, validation videos) of fold ``fold`` (1-based): the index's train and val videos, those of the
    fold's subjects validating."""
    from trainables.data.cache import load_split

    subjects = set(plan.folds[fold - 1])
    videos = [v for split in CV_SPLITS for v in load_split(index_path, split, missing_ok=True)]
    train = [v for v in videos if v.subject not in subjects]
    val = [v for v in videos if v.subject in subjects]
    if not train or not val:
        raise DataError(f"fold {fold} of dataset index {index_path}: {len(train)} training and {len(val)} validation "
                        "videos; the fold plan does not match the index")
    return train, val
