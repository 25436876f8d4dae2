"""From cached videos to model inputs: training windows with fused labels, and dense evaluation on the label timeline.

A window is ``length`` consecutive frames. Frame selection inside a window works on the window's *valid* (face found)
frames, as in paper 000 where a clip is built from its valid face frames: SSTS draws ``clip_len`` of them, sorts, and
keeps every ``stride``-th from a random offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainables.data.cache import CachedVideo
from trainables.data.sampling import ssts_indices, ssts_views
from trainables.data.windows import coverage_mean, dense_window_starts, fuse_labels, window_starts


@dataclass(frozen=True)
class ClipSpec:
    """Window and sampling knobs of a trial (all searchable)."""

    length: int = 32
    overlap: float = 0.5
    fusion: str = "mean"
    clip_len: int = 24
    stride: int = 2
    stochastic: bool = True

    @classmethod
    def from_config(cls, cfg: dict) -> "ClipSpec":
        return cls(
            length=int(cfg.get("window_length", cls.length)),
            overlap=float(cfg.get("window_overlap", cls.overlap)),
            fusion=str(cfg.get("label_fusion", cls.fusion)),
            clip_len=int(cfg.get("clip_len", cls.clip_len)),
            stride=int(cfg.get("ssts_stride", cls.stride)),
            stochastic=bool(cfg.get("ssts_stochastic", cls.stochastic)),
        )

    def __post_init__(self) -> None:
        if self.length < self.clip_len:
            raise ValueError(f"window_length={self.length} is shorter than clip_len={self.clip_len}; "
                             "SSTS draws clip_len frames from each window")


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float (T, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


class TrainWindows(torch.utils.data.Dataset):
    """Training windows over cached videos, each with its fused label.

    Windows with fewer than ``clip_len`` valid frames are dropped (SSTS needs ``clip_len``), as are windows without
    any annotated label. Frame draws are seeded by (seed, epoch, index), so an epoch is reproducible whatever the
    worker or process that loads it.
    """

    def __init__(self, videos: list[CachedVideo], spec: ClipSpec, seed: int = 0):
        self.videos, self.spec, self.seed, self.epoch = videos, spec, seed, 0
        items, labels = [], []
        for v_i, v in enumerate(videos):
            for s in window_starts(v.num_frames, spec.length, spec.overlap):
                pos = np.flatnonzero(v.valid[s:s + spec.length])
                if len(pos) < spec.clip_len:
                    continue
                y = fuse_labels(v.labels[s:s + spec.length], spec.fusion)
                if np.isnan(y).all():
                    continue
                items.append((v_i, int(s)))
                labels.append(y)
        if not items:
            raise ValueError(f"no training window: every window of length {spec.length} has fewer than "
                             f"{spec.clip_len} valid face frames or no label")
        self.items = items
        self.labels = np.asarray(labels, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v_i, s = self.items[i]
        v, spec = self.videos[v_i], self.spec
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pos = s + np.flatnonzero(v.valid[s:s + spec.length])
        idx = pos[ssts_indices(len(pos), spec.stride, rng, spec.clip_len, spec.stochastic)]
        return to_tensor(v.frames[idx]), torch.from_numpy(self.labels[i])


@torch.no_grad()
def predict_timeline(model: torch.nn.Module, video: CachedVideo, spec: ClipSpec, device: torch.device,
                     batch_size: int = 32, seed: int = 0) -> np.ndarray:
    """Per-label-step predictions (T, D) for one video.

    Dense windows cover every frame; each window is predicted as the mean over its ``stride`` SSTS views (the
    ensemble inference of paper 000) of one fixed draw; each frame then takes the mean of all windows covering it.
    Judgment call: a window with fewer than ``clip_len`` valid frames still gets a prediction (drawn from all its
    frames, no-face frames being black), so that every label step is scored as the protocol requires. A video shorter
    than one window is predicted as neutral 0 on every step.
    """
    model.eval()
    n, d = video.num_frames, video.labels.shape[1]
    starts = dense_window_starts(n, spec.length, spec.overlap)
    if len(starts) == 0:
        return np.zeros((n, d), dtype=np.float64)
    views_per_window = []
    for s in starts:
        pos = s + np.flatnonzero(video.valid[s:s + spec.length])
        if len(pos) < spec.clip_len:
            pos = s + np.arange(spec.length)
        rng = np.random.default_rng((seed, int(s)))
        views_per_window.append([pos[v] for v in ssts_views(len(pos), spec.stride, rng, spec.clip_len, spec.stochastic)])
    window_preds = np.zeros((len(starts), d), dtype=np.float64)
    for k in range(spec.stride):  # view k has the same length in every window, so views batch together
        for b in range(0, len(starts), batch_size):
            idx = [views_per_window[w][k] for w in range(b, min(b + batch_size, len(starts)))]
            x = torch.stack([to_tensor(video.frames[i]) for i in idx]).to(device)
            window_preds[b:b + len(idx)] += model(x)["window"].float().cpu().numpy()
    window_preds /= spec.stride
    return coverage_mean(n, starts, spec.length, window_preds)
