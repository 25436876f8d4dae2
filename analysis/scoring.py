"""A model scored on the test split: its post-processed predictions on the cached test videos, the objective over every
label step, and a subject-level bootstrap 95% interval of it when the split has at least
:data:`MIN_SUBJECTS_FOR_INTERVAL` subjects (with fewer, no interval is computed, printed or stored)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BOOTSTRAP_DRAWS = 1000
#: Fewest test subjects for which :func:`score` computes a bootstrap interval. The bootstrap resamples subjects with
#: replacement: n subjects have C(2n-1, n) distinct resamples, i.e. 1, 3 and 10 for 1, 2 and 3 subjects, so the 2.5th
#: and 97.5th percentiles of the draws are a few repeated values (one subject: the point value twice), not an
#: interval. With fewer subjects the score has no interval and says so instead of printing a degenerate one.
MIN_SUBJECTS_FOR_INTERVAL = 4


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
    from trainables.data.cache import load_split, read_index

    videos = load_split(index_path, "test")
    index = read_index(index_path)
    return videos, {v["video_id"]: v["subject"] for v in index["videos"]}
