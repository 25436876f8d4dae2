"""The frozen probe that scores a pretrained encoder: what a pretraining study optimises.

A reconstruction or pretext loss does not compare encoders: a higher mask ratio raises the reconstruction loss
without making the encoder worse, and BYOL's and DINO's losses are on different scales. So every pretraining report
trains a small temporal head on the frozen encoder's features of the train subjects' labelled windows and scores it on
the validation subjects exactly as a fine-tuning trial is scored (``trainables.loop.evaluate``: the canonical label
timeline, the same windows and clip sampling). Its CCC is the study's objective (``val_ccc_mean``).

Judgment calls: the head pools each time step's tokens over space with a learned attention (one score per token,
softmax over the positions: an "attentive probe"; averaging the tokens instead lost what faces show in one place, the
mouth's curve, and a probe on averaged tokens of a masked autoencoder scored about 0 whether pretrained or not), then
a LayerNorm, a one-layer GRU of :data:`PROBE_HIDDEN` units over the time steps and a linear output averaged over time
(a window's target is one fused label); trained with 1 - CCC (per dimension,
averaged) by Adam at ``probe_lr`` for ``probe_epochs`` epochs in batches of :data:`PROBE_BATCH`, seeded by the
trial's seed. The features of the training windows are computed once per probe (one fixed frame draw, no
augmentation): the encoder is frozen, so every epoch of the head would see the same features for the same clip.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from trainables.objectives.concordance import masked_ccc

PROBE_HIDDEN = 32
PROBE_BATCH = 32
ENCODE_BATCH = 16


class ProbeHead(nn.Module):
    """(B, t, s, F) or (B, t, F) encoder features -> (B, D) window prediction."""

    def __init__(self, features: int, out_dims: int, hidden: int = PROBE_HIDDEN):
        super().__init__()
        self.token_norm = nn.LayerNorm(features)
        self.score = nn.Linear(features, 1)
        self.norm = nn.LayerNorm(features)
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, out_dims)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() == 4:  # attention over the spatial positions of each time step
            tokens = self.token_norm(feats)
            weights = self.score(tokens).softmax(dim=2)
            feats = (weights * tokens).sum(dim=2)
        seq, _ = self.gru(self.norm(feats))
        return self.out(seq).mean(dim=1)


class ProbeModel(nn.Module):
    """The frozen encoder and the probe's head as one model with the backbones' output contract (``"window"``), so
    the fine-tuning evaluation scores it unchanged."""

    def __init__(self, pretrainer: nn.Module, head: ProbeHead):
        super().__init__()
        self.pretrainer, self.head = pretrainer, head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            feats = self.pretrainer.encode(x)
        return {"window": self.head(feats.float())}


def _ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - masked_ccc(target, pred, dim=0).mean()


@torch.no_grad()
def _features(pretrainer: nn.Module, windows, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    loader = torch.utils.data.DataLoader(windows, batch_size=ENCODE_BATCH, shuffle=False)
    for x, y in loader:
        xs.append(pretrainer.encode(x.to(device)).float().cpu())
        ys.append(y.float())
    return torch.cat(xs), torch.cat(ys)


def run_probe(pretrainer: nn.Module, train_videos: list, val_videos: list, spec, device: torch.device, *,
              epochs: int, lr: float, seed: int, faceless: str = "model") -> tuple[dict[str, float], dict[str, Any]]:
    """Train the probe's head on the frozen encoder and score it on ``val_videos``.

    Returns:
        (metrics as ``trainables.loop.evaluate`` gives them: ``ccc_mean`` ..., predictions per validation video).
    """
    from trainables.data.clips import TrainWindows
    from trainables.loop import evaluate

    spec = dataclasses.replace(spec, target="window")  # one fused label per window, whatever the study's target
    was_training = pretrainer.training
    pretrainer.eval()
    try:
        feats, labels = _features(pretrainer, TrainWindows(train_videos, spec, seed=seed), device)
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = ProbeHead(feats.shape[-1], labels.shape[-1]).to(device)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(len(feats), generator=gen)
            for start in range(0, len(order), PROBE_BATCH):
                batch = order[start:start + PROBE_BATCH]
                if len(batch) < 2:  # a CCC needs two samples
                    continue
                loss = _ccc_loss(head(feats[batch].to(device)), labels[batch].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        head.eval()
        return evaluate(ProbeModel(pretrainer, head), val_videos, spec, device, seed=seed, faceless=faceless)
    finally:
        pretrainer.train(was_training)
