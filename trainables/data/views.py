"""Windows and clip sampling over a cached video, without torch: a trial's :class:`ClipSpec`, the :class:`VideoView`
of a video at the trial's frame rate, and :func:`training_windows`, the training windows with their fused labels.

``trainables.data.clips`` turns these into tensors; the sweep's driver uses them as they are to check every
configuration against the data before Ray starts, without importing torch (see ``cluster.preflight``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainables.data.cache import CachedVideo, kept_frame_indices
from trainables.data.labels import label_frame_index, nearest_label_step
from trainables.data.sampling import (consecutive_indices, ssts_indices, ssts_views, uniform_clip_starts,
                                      uniform_indices)
from trainables.data.windows import FUSION_MODES, fuse_labels, window_starts
from trainables.names import SAMPLERS as SAMPLER_NAMES

SAMPLERS = SAMPLER_NAMES
TARGETS = ("window", "sequence")


@dataclass(frozen=True)
class ClipSpec:
    """Window and sampling knobs of a trial (all searchable).

    Attributes:
        length: window length in grid frames; overlap: fraction shared with the previous window.
        fusion: how a window's labels become one target (``mean``, ``extremum``, ``median``, ``center``, ``last``).
        clip_len, stride, stochastic: SSTS (paper 000); sampler: ``ssts`` | ``uniform`` | ``consecutive``.
        num_frames: frames taken by the uniform / consecutive samplers (default ``clip_len``).
        fps: view the cache at this rate (None: the cache's own rate).
        gap_tolerance: drop a training window whose consecutive valid frames are more than this many grid frames
            apart (paper 003); None keeps every window.
        target: ``window`` (one fused label per window) or ``sequence`` (the label of every sampled frame).
        frame_step: the consecutive sampler takes every ``frame_step``-th frame of its run (paper 002: 16 frames at a
            temporal stride of 4 span 61 valid frames).
        eval_clips: the consecutive sampler's evaluation views: one centred clip, or this many clips spread uniformly
            over the window (first at its start, last at its end), averaged (paper 002 averages 2).
    """

    length: int = 32
    overlap: float = 0.5
    fusion: str = "mean"
    clip_len: int = 24
    stride: int = 2
    stochastic: bool = True
    sampler: str = "ssts"
    num_frames: int | None = None
    fps: float | None = None
    gap_tolerance: int | None = None
    target: str = "window"
    frame_step: int = 1
    eval_clips: int = 1

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if self.target not in TARGETS:
            raise ValueError(f"label_target {self.target!r} is unknown; allowed: {', '.join(TARGETS)}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"label_fusion {self.fusion!r} is unknown; allowed: {', '.join(FUSION_MODES)}")
        if self.frame_step < 1 or self.eval_clips < 1:
            raise ValueError(f"frame_step and eval_clips must be >= 1, got {self.frame_step} and {self.eval_clips}")
        if self.length < self.needed:
            what = "clip_len" if self.sampler == "ssts" else "num_frames"
            step = f" at frame_step={self.frame_step}" if self.sampler == "consecutive" and self.frame_step > 1 else ""
            raise ValueError(f"window_length={self.length} is shorter than {what}={self.frames}{step}; "
                             f"the {self.sampler} sampler spans {self.needed} frames of each window")

    @property
    def frames(self) -> int:
        """Frames one clip holds (SSTS: before its stride)."""
        return self.clip_len if self.sampler == "ssts" else int(self.num_frames or self.clip_len)

    @property
    def needed(self) -> int:
        """Valid frames a window must hold for the sampler (a strided consecutive run spans more than it keeps)."""
        if self.sampler == "consecutive":
            return (self.frames - 1) * self.frame_step + 1
        return self.frames

    def sample(self, num_valid: int, rng: np.random.Generator) -> np.ndarray:
        if self.sampler == "ssts":
            return ssts_indices(num_valid, self.stride, rng, self.clip_len, self.stochastic)
        if self.sampler == "uniform":
            return uniform_indices(num_valid, self.needed)
        return consecutive_indices(num_valid, self.needed, rng, self.stochastic)[::self.frame_step]

    def views(self, num_valid: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Evaluation views of one window: the ``stride`` SSTS views of one draw (the ensemble of paper 000), or the
        single deterministic view of the other samplers."""
        if self.sampler == "ssts":
            return ssts_views(num_valid, self.stride, rng, self.clip_len, self.stochastic)
        if self.sampler == "uniform":
            return [uniform_indices(num_valid, self.needed)]
        if self.eval_clips > 1:
            return [np.arange(s, s + self.needed, self.frame_step, dtype=np.int64)
                    for s in uniform_clip_starts(num_valid, self.needed, self.eval_clips)]
        start = (num_valid - self.needed) // 2  # the centred run: deterministic and symmetric
        return [np.arange(start, start + self.needed, self.frame_step, dtype=np.int64)]


class VideoView:
    """A cached video seen at the trial's frame rate: grid -> cached frame, and each label step's grid position."""

    def __init__(self, video: CachedVideo, fps: float | None):
        self.video = video
        self.grid = kept_frame_indices(video.num_frames, video.fps, fps)
        self.fps = fps or video.fps
        self.valid = np.asarray(video.valid)[self.grid]
        # Entries without label times have one label step per cached frame: step k is at k / video.fps.
        times = video.label_times if video.label_times is not None else video.label_frames / video.fps
        self.label_pos = label_frame_index(times, self.fps, len(self.grid))
        self.labels = video.labels
        self._frame_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.grid)

    def window_labels(self, s: int, length: int) -> np.ndarray:
        return self.labels[(self.label_pos >= s) & (self.label_pos < s + length)]

    def frame_labels(self) -> np.ndarray:
        """(G, D) the label of every grid frame: its nearest label step by grid position (``nearest_label_step``:
        ties -> the later step); frames more than one label period from any step are NaN."""
        if self._frame_labels is None:
            order = np.argsort(self.label_pos, kind="stable")
            pos = self.label_pos[order]
            period = max(1.0, float(np.median(np.diff(pos))) if len(pos) > 1 else 1.0)
            pick = nearest_label_step(np.arange(len(self.grid)), pos, period)
            out = np.full((len(self.grid), self.labels.shape[1]), np.nan, dtype=np.float32)
            out[pick >= 0] = self.labels[order][pick[pick >= 0]]
            self._frame_labels = out
        return self._frame_labels

    def frames(self, positions: np.ndarray) -> np.ndarray:
        return self.video.frames[self.grid[positions]]

    def draw(self, s: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
        """The grid positions of the frames ``spec``'s sampler draws from the valid frames of the window at ``s``."""
        pos = s + np.flatnonzero(self.valid[s:s + spec.length])
        return pos[spec.sample(len(pos), rng)]


def usable_window_starts(view: VideoView, spec: ClipSpec) -> list[int]:
    """Starts of ``view``'s windows with the valid face frames the sampler needs (SSTS needs ``clip_len``) and no gap
    between them above ``gap_tolerance``; labels are not looked at (pretraining takes unlabelled windows too)."""
    starts = []
    for s in window_starts(len(view), spec.length, spec.overlap):
        pos = np.flatnonzero(view.valid[s:s + spec.length])
        if len(pos) < spec.needed:
            continue
        if spec.gap_tolerance is not None and len(pos) > 1 and np.diff(pos).max() > spec.gap_tolerance:
            continue
        starts.append(int(s))
    return starts


def training_windows(views: list[VideoView], spec: ClipSpec) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The training windows of ``views``: ``(video position, first grid frame)`` of each, and its fused label (N, D).

    Windows with fewer valid frames than the sampler needs are dropped (SSTS needs ``clip_len``), as are windows
    whose valid frames have a gap above ``gap_tolerance`` and windows without any annotated label step.

    Raises:
        ValueError: no window is left.
    """
    items, labels = [], []
    for v_i, view in enumerate(views):
        for s in usable_window_starts(view, spec):
            window = view.window_labels(int(s), spec.length)
            if len(window) == 0 or np.isnan(window).all():
                continue
            items.append((v_i, int(s)))
            labels.append(fuse_labels(window, spec.fusion))
    if not items:
        raise ValueError(f"no training window: every window of length {spec.length} has fewer than "
                         f"{spec.needed} valid face frames, a gap above the tolerance, or no label")
    return items, np.asarray(labels, dtype=np.float32)
