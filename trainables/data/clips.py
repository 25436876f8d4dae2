"""From cached videos to model inputs: training windows with fused or per-frame labels, and dense evaluation on the
label timeline.

A trial may look at a cached video at a lower frame rate than the cache holds (``fps``, paper 003 compares 10 and 50
fps): the video is then seen through a *grid* of cached frames, and windows, overlaps and gaps count grid frames. A
window is ``length`` consecutive grid frames. Frame selection inside a window works on the window's *valid* (face found)
frames, as in paper 000 where a clip is built from its valid face frames: SSTS draws ``clip_len`` of them, sorts them,
and keeps every ``stride``-th from a random offset; the uniform and consecutive samplers take ``num_frames`` of them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from trainables.data.cache import CachedVideo
# The window and sampling arithmetic lives in ``views`` (no torch: the sweep's driver checks data with it).
from trainables.data.views import SAMPLERS, TARGETS, ClipSpec, VideoView, training_windows  # noqa: F401
from trainables.data.windows import coverage_mean, dense_window_starts


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
        self.views, items, labels = _windows(videos, spec)
        self.videos, self.spec, self.seed, self.epoch, self.transform = videos, spec, seed, 0, transform
        self.items, self.labels = list(items), labels.copy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v_i, s = self.items[i]
        view, spec = self.views[v_i], self.spec
        rng = np.random.default_rng((self.seed, self.epoch, i))
        chosen = view.draw(s, spec, rng)
        clip = to_uint8_tensor(view.frames(chosen))
        if self.transform is not None:
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            clip = self.transform(clip, gen)
        if spec.target == "sequence":
            return normalise(clip), torch.from_numpy(view.frame_labels()[chosen])
        return normalise(clip), torch.from_numpy(self.labels[i])


#: The training windows this process has computed, most recent last: (ids of the videos, spec) -> (the videos, their
#: views, windows, labels). The entry holds the videos, so their ids stay theirs while it is kept.
_WINDOWS: OrderedDict[tuple, tuple] = OrderedDict()
_WINDOWS_KEPT = 4


def _windows(videos: list[CachedVideo], spec: ClipSpec) -> tuple[list[VideoView], list, np.ndarray]:
    """The views of ``videos`` at ``spec.fps`` and their training windows, computed once per process for the same
    videos (``load_split`` returns the same objects to every trial of a process) and window settings."""
    key = (tuple(map(id, videos)), spec)
    kept = _WINDOWS.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], videos)):
        _WINDOWS.move_to_end(key)
        return kept[1], kept[2], kept[3]
    views = [VideoView(v, spec.fps) for v in videos]
    items, labels = training_windows(views, spec)
    _WINDOWS[key] = (tuple(videos), views, items, labels)
    while len(_WINDOWS) > _WINDOWS_KEPT:
        _WINDOWS.popitem(last=False)
    return views, items, labels


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
