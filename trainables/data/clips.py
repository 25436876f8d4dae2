"""From cached videos to model inputs: training windows with fused or per-frame labels, and dense evaluation on the
label timeline.

A trial may look at a cached video at a lower frame rate than the cache holds (``fps``, paper 003 compares 10 and 50
fps): the video is then seen through a *grid* of cached frames, and windows, overlaps and gaps count grid frames. A
window is ``length`` consecutive grid frames. Frame selection inside a window works on the window's *valid* (face found)
frames, as in paper 000 where a clip is built from its valid face frames: SSTS draws ``clip_len`` of them, sorts them,
and keeps every ``stride``-th from a random offset; the uniform and consecutive samplers take ``num_frames`` of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from trainables.data.cache import CachedVideo, kept_frame_indices
from trainables.data.labels import label_frame_index, nearest_label_step
from trainables.data.sampling import (consecutive_indices, ssts_indices, ssts_views, uniform_clip_starts,
                                      uniform_indices)
from trainables.data.windows import FUSION_MODES, coverage_mean, dense_window_starts, fuse_labels, window_starts

SAMPLERS = ("ssts", "uniform", "consecutive")
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


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float (T, C, H, W) in [-1, 1]."""
    return normalise(to_uint8_tensor(frames))


def to_uint8_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> uint8 (T, C, H, W), the layout augmentations work on."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(127.5).sub_(1.0)


class TrainWindows(torch.utils.data.Dataset):
    """Training windows over cached videos, each with its fused label (or per-frame labels for sequence targets).

    Windows with fewer valid frames than the sampler needs are dropped (SSTS needs ``clip_len``), as are windows
    whose valid frames have a gap above ``gap_tolerance`` and windows without any annotated label step. Frame draws and
    augmentations are seeded by (seed, epoch, index), so an epoch is reproducible whatever process loads it.
    """

    def __init__(self, videos: list[CachedVideo], spec: ClipSpec, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.views = [VideoView(v, spec.fps) for v in videos]
        self.videos, self.spec, self.seed, self.epoch, self.transform = videos, spec, seed, 0, transform
        items, labels = [], []
        for v_i, view in enumerate(self.views):
            for s in window_starts(len(view), spec.length, spec.overlap):
                pos = np.flatnonzero(view.valid[s:s + spec.length])
                if len(pos) < spec.needed:
                    continue
                if spec.gap_tolerance is not None and len(pos) > 1 and np.diff(pos).max() > spec.gap_tolerance:
                    continue
                window = view.window_labels(int(s), spec.length)
                if len(window) == 0 or np.isnan(window).all():
                    continue
                items.append((v_i, int(s)))
                labels.append(fuse_labels(window, spec.fusion))
        if not items:
            raise ValueError(f"no training window: every window of length {spec.length} has fewer than "
                             f"{spec.needed} valid face frames, a gap above the tolerance, or no label")
        self.items = items
        self.labels = np.asarray(labels, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v_i, s = self.items[i]
        view, spec = self.views[v_i], self.spec
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pos = s + np.flatnonzero(view.valid[s:s + spec.length])
        chosen = pos[spec.sample(len(pos), rng)]
        clip = to_uint8_tensor(view.frames(chosen))
        if self.transform is not None:
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            clip = self.transform(clip, gen)
        if spec.target == "sequence":
            return normalise(clip), torch.from_numpy(view.frame_labels()[chosen])
        return normalise(clip), torch.from_numpy(self.labels[i])


@torch.no_grad()
def predict_timeline(model: torch.nn.Module, video: CachedVideo, spec: ClipSpec, device: torch.device,
                     batch_size: int = 32, seed: int = 0,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     view: VideoView | None = None) -> np.ndarray:
    """Per-grid-frame predictions (G, D) for one video (G = the cached frames at ``spec.fps``).

    Dense windows cover every frame; each window is predicted from its evaluation views (for SSTS, the mean over its
    ``stride`` views of one fixed draw: the ensemble inference of paper 000); each frame then takes the mean of all
    windows covering it. With ``target="sequence"`` the per-frame outputs are accumulated at the frames the views
    sampled and frames no view sampled are linearly interpolated from their neighbours.
    A model with the per-frame protocol (``encode_frames``/``decode_frames``, e.g. the CNN-RNN) has each frame encoded
    once and its features shared by every window and view that holds it; the outputs are the same.
    Judgment calls: a window with fewer valid frames than the sampler needs still gets a prediction (drawn from all its
    frames, no-face frames being black), so that every label step is scored as the protocol requires; a video shorter
    than one window is predicted as neutral 0 everywhere.
    """
    model.eval()
    view = VideoView(video, spec.fps) if view is None else view
    g, d = len(view), video.labels.shape[1]
    starts = dense_window_starts(g, spec.length, spec.overlap)
    if len(starts) == 0:
        return np.zeros((g, d), dtype=np.float64)
    views_per_window = []
    for s in starts:
        pos = s + np.flatnonzero(view.valid[s:s + spec.length])
        if len(pos) < spec.needed:
            pos = s + np.arange(spec.length)
        rng = np.random.default_rng((seed, int(s)))
        views_per_window.append([pos[v] for v in spec.views(len(pos), rng)])
    n_views = len(views_per_window[0])
    window_preds = np.zeros((len(starts), d), dtype=np.float64)
    frame_sum = np.zeros((g, d))
    frame_cnt = np.zeros(g)
    features = None
    if _per_frame(model, transform):
        # Overlapping windows and their views share frames: encode every frame once, then run only the temporal part
        # per clip. Same outputs as ``model(clips)`` (the encoder sees each frame alone, in eval mode).
        # As many frames per encoder pass as a batch of clips holds, so peak memory stays that of the clip path.
        features = _encode_frames(model, view, views_per_window, transform, device,
                                  batch_size * len(views_per_window[0][0]))
    for k in range(n_views):  # view k has the same length in every window, so views batch together
        for b in range(0, len(starts), batch_size):
            idx = [views_per_window[w][k] for w in range(b, min(b + batch_size, len(starts)))]
            if features is not None:
                out = model.decode_frames(features[torch.from_numpy(np.stack(idx))])
            else:
                clips = [to_uint8_tensor(view.frames(i)) for i in idx]
                if transform is not None:
                    clips = [transform(c) for c in clips]
                out = model(torch.stack([normalise(c) for c in clips]).to(device))
            window_preds[b:b + len(idx)] += out["window"].float().cpu().numpy()
            if spec.target == "sequence":
                frames_out = out["frames"].float().cpu().numpy()
                for j, positions in enumerate(idx):
                    np.add.at(frame_sum, positions, frames_out[j])
                    np.add.at(frame_cnt, positions, 1)
    if spec.target == "sequence" and frame_cnt.any():
        seen = frame_cnt > 0
        mean = frame_sum[seen] / frame_cnt[seen, None]
        grid = np.arange(g)
        return np.stack([np.interp(grid, grid[seen], mean[:, j]) for j in range(d)], axis=1)
    window_preds /= n_views
    return coverage_mean(g, starts, spec.length, window_preds)


def _per_frame(model: torch.nn.Module, transform) -> bool:
    """Whether ``model`` offers the per-frame protocol and ``transform`` treats every frame alike (none, or declared
    ``per_frame``), so that frame features can be shared between clips."""
    return (callable(getattr(model, "encode_frames", None)) and callable(getattr(model, "decode_frames", None))
            and (transform is None or bool(getattr(transform, "per_frame", False))))


def _encode_frames(model: torch.nn.Module, view: VideoView, views_per_window: list, transform,
                   device: torch.device, batch_frames: int) -> torch.Tensor:
    """(G, F) features of the grid frames any view uses (rows of unused frames stay zero), ``batch_frames`` at a time."""
    used = np.unique(np.concatenate([np.concatenate(views) for views in views_per_window]))
    features = None
    for b in range(0, len(used), batch_frames):
        pos = used[b:b + batch_frames]
        frames = to_uint8_tensor(view.frames(pos))
        if transform is not None:
            frames = transform(frames)
        f = model.encode_frames(normalise(frames).to(device))
        if features is None:
            features = torch.zeros((len(view), f.shape[1]), dtype=f.dtype, device=f.device)
        features[torch.from_numpy(pos).to(f.device)] = f
    return features


def predict_labels(model: torch.nn.Module, video: CachedVideo, spec: ClipSpec, device: torch.device,
                   batch_size: int = 32, seed: int = 0,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Predictions (L, D) on the video's canonical label timeline: each label step takes the prediction of the grid
    frame nearest its time (SPEC's evaluation protocol: metrics on label steps, never on windows)."""
    view = VideoView(video, spec.fps)
    return predict_timeline(model, video, spec, device, batch_size, seed, transform, view=view)[view.label_pos]
