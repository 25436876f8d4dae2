"""One pretraining trial: a self-supervised method trains a backbone's encoder on unlabelled clips, and a frozen probe
scores the encoder after every epoch (``trainables.pretrain.probe``).

The trial runs where fine-tuning trials run (the inline executor, or Ray Train workers with DDP and mixed precision)
and reports the way they do, so a pretraining study is a sweep like any other: progress, ASHA on the objective,
resume from the last checkpoint after a kill, a non-finite loss ending this trial only, MLflow records. Every report
carries ``pretrain_loss`` (the method's loss averaged over the epoch's steps, plus the method's own logs as
``pretrain_<name>``) and the probe's ``val_*`` metrics; its checkpoint holds ``encoder.pt``, the encoder's weights in
the layout the backbone's own loader reads (``checkpoint:`` of a video transformer, ``pretext_checkpoint:`` of the
3D-conv ResNet), which MLflow keeps with the trial's best report.

Which videos: every video of the train split, labelled or not (a manifest row with an empty ``labels`` cell is
pretraining-only), or with ``pretrain_videos: unlabelled`` only the unlabelled ones. Validation and test subjects are
never pretrained on, labelled or not, so nothing the probe or a later fine-tuning is scored on leaks in through
pretraining. The subjects pretrained on are written beside the encoder (``pretrain_subjects.json``), and a fine-tuning
sweep that would validate or test on any of them (another index's split, or cross-validation folds, which validate on
every labelled train subject) is refused before it starts (``cluster.inputs``): pretrain on the unlabelled videos
only for an encoder a cross-validated sweep may use. The probe trains on the train split's labelled videos and is
scored on the validation split.

Early stopping: the scheduler uses the objective, the probe's CCC, at its rungs, not the reconstruction or pretext
loss: those losses do not compare across the knobs searched (a higher mask ratio raises the reconstruction loss; BYOL
and DINO losses have different scales), so ranking by them would stop the wrong trials.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data.cache import load_split
from trainables.data.clips import normalise, to_uint8_tensor
from trainables.data.views import VideoView, usable_window_starts

from trainables.pretrain import ENCODER_FILE, SUBJECTS_FILE


class PretrainClips(torch.utils.data.Dataset):
    """Clips of every window of ``videos`` with enough valid face frames for the sampler, labels or not.

    Frame draws are seeded by (seed, epoch, index), like the fine-tuning windows, so an epoch is the same in whatever
    process loads it; augmentation is the method's own (views, crops), not applied here.
    """

    def __init__(self, videos: list, spec, seed: int = 0):
        self.views = [VideoView(v, spec.fps) for v in videos]
        self.spec, self.seed, self.epoch = spec, seed, 0
        self.items = [(v_i, s) for v_i, view in enumerate(self.views) for s in usable_window_starts(view, spec)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        v_i, s = self.items[i]
        view = self.views[v_i]
        chosen = view.draw(s, self.spec, np.random.default_rng((self.seed, self.epoch, i)))
        return normalise(to_uint8_tensor(view.frames(chosen)))


def pretraining_videos(index_path: str, which: str = "train") -> list:
    """The videos a trial pretrains on (the module docstring's rule): every prepared video of the train split, labelled
    or not (``train``), or only its unlabelled ones (``unlabelled``)."""
    return load_split(index_path, "train", labelled=None if which == "train" else False)


def fit_pretrain(cfg: TrialConfig, session) -> None:
    """Pretrain one configuration, reporting after every epoch (see the module docstring)."""
    from trainables.loop import (Diverged, MicroBatches, _unwrap, build_model, report_diverged_to,
                                 report_with_checkpoint, seed_everything, split_report, start_epoch,
                                 warmup_cosine)
    from trainables.objectives.postprocess import PostProcess
    from trainables.pretrain.methods import create_pretrainer
    from trainables.pretrain.probe import run_probe

    rank, seed, device = session.rank, cfg.seed, session.device
    torch.set_num_threads(cfg.threads)
    seed_everything(seed + rank)
    spec = cfg.clip_spec()
    videos = pretraining_videos(cfg.index_path, cfg.pretrain_videos)
    subjects = sorted({v.subject for v in videos})
    probe_train, probe_val = load_split(cfg.index_path, "train"), load_split(cfg.index_path, "val")
    clips = PretrainClips(videos, spec, seed=seed + rank)
    if not len(clips):
        raise ValueError(f"no pretraining clip: no window of length {spec.length} in the train split's videos has "
                         f"{spec.needed} valid face frames")
    in_chans = int(videos[0].frames.shape[3])
    out_dims = int(probe_train[0].labels.shape[1])
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(clips, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                         drop_last=len(clips) > cfg.batch_size)
    loader = session.prepare_data_loader(loader)
    pretrainer = create_pretrainer(cfg.pretrain_method, build_model(cfg, out_dims, in_chans), cfg).to(device)
    # DDP on Ray Train workers: the backbone's heads (and a ViT's pooling norm) get no gradient from pretraining.
    model = session.prepare_model(pretrainer, unused_parameters=True)
    params = [p for p in pretrainer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(loader))
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = warmup_cosine(optimizer, total_steps, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    epoch, train_seconds, split = 0, 0.0, MicroBatches()
    state = session.load_state(device)
    if state is not None:
        pretrainer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, train_seconds = int(state["epoch"]), float(state.get("train_seconds", 0.0))
    session.marks["built_at"] = time.time()
    stop_requested = getattr(session, "should_stop", None) or (lambda: False)
    while epoch < cfg.epochs:
        t0 = time.perf_counter()
        start_epoch(clips, loader, generator, seed, epoch)
        draws = torch.Generator().manual_seed((seed * 1000 + epoch) * 100 + rank)  # masks, views, crops
        logs: dict[str, list[float]] = {}
        progress = {"epoch": epoch + 1, "step": epoch + 1, "worker_pid": os.getpid(), **session.marks}
        model.train()
        for i, x in enumerate(loader):
            if stop_requested():
                return
            out = pretrain_step(model, pretrainer, x, draws, optimizer, scaler, params, cfg.grad_clip, use_amp,
                                device, split)
            if out is None:
                report_diverged_to(session, cfg, progress, "pretrain_loss")
                return
            scheduler.step()
            pretrainer.after_step(epoch * steps_per_epoch + i + 1, total_steps)
            for key, value in out.items():
                logs.setdefault(key, []).append(value)
        train_time = time.perf_counter() - t0
        train_seconds += train_time
        epoch += 1
        try:
            metrics, preds = run_probe(_unwrap(model), probe_train, probe_val, spec, device, epochs=cfg.probe_epochs,
                                       lr=cfg.probe_lr, seed=seed, faceless=cfg.faceless)
        except Diverged:
            report_diverged_to(session, cfg, progress, "pretrain_loss")
            return
        report = {**progress, "train_s": train_seconds, "epoch_time_s": time.perf_counter() - t0,
                  **split_report(cfg.batch_size, split.accumulation),
                  "train_time_s": train_time, "clips_per_s": len(clips) / max(train_time, 1e-9),
                  "lr": scheduler.get_last_lr()[0], "pretrain_clips": len(clips), "pretrain_videos": len(videos),
                  **{("pretrain_loss" if k == "loss" else f"pretrain_{k}"): float(np.mean(v)) for k, v in logs.items()},
                  **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        state = {"model": pretrainer.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "unit": epoch, "train_seconds": train_seconds,
                 "config": cfg.to_dict(), "in_chans": in_chans, "out_dims": out_dims}
        # The subjects travel with the encoder: a fine-tuning sweep refuses it when it would validate or test on them.
        report_with_checkpoint(session, report, state, preds, PostProcess(),
                               extra={SUBJECTS_FILE: {"subjects": subjects, "index": str(cfg.index_path)}},
                               weights={ENCODER_FILE: pretrainer.encoder_state()} if session.rank == 0 else None)


def pretrain_step(model, pretrainer, x: torch.Tensor, draws: torch.Generator, optimizer, scaler, params,
                  grad_clip: float, use_amp: bool, device: torch.device, split) -> dict[str, float] | None:
    """One optimizer step of ``model`` (the pretrainer, DDP-wrapped or not) on the batch ``x``: the batch's logged
    values (share-weighted means over its micro-batches), or None when a loss is not finite.

    Out of accelerator memory in the forward or backward pass, the batch is taken again in ``split.accumulation``
    micro-batches (``trainables.loop.retry_out_of_memory``), each loss weighted by its share of the batch. The retry
    starts from the generator state the failed attempt started from, and the failed attempt's DINO teacher outputs
    are dropped (``Pretrainer.forget_pending``). MAE's tube masks (one draw of the whole batch's numbers, taken
    micro-batch after micro-batch) are then the whole batch's, so its step (the mean squared error over an equal
    number of masked patches per clip, LayerNorm encoders) is the whole batch's up to rounding. Not identical:
    BYOL's and DINO's views (each augmentation draws its numbers per micro-batch: reproducible, not the whole
    batch's), their batch-level parts (BatchNorm statistics in BYOL's heads and a ResNet encoder, whose running
    statistics a failed attempt has already moved once; DINO's centre moves once per step either way, from every
    micro-batch's teacher outputs).
    """
    from trainables.loop import optimizer_step, retry_out_of_memory

    drawn = draws.get_state()

    def before_retry() -> None:
        draws.set_state(drawn)
        pretrainer.forget_pending()

    logs = retry_out_of_memory(split, lambda: _micro_batched_backward(model, x, draws, optimizer, scaler, use_amp,
                                                                      device, split.accumulation),
                               optimizer, len(x), before_retry)
    if logs is not None:
        optimizer_step(scaler, optimizer, params, grad_clip)
    return logs


def _micro_batched_backward(model, x: torch.Tensor, draws: torch.Generator, optimizer, scaler, use_amp: bool,
                            device: torch.device, accumulation: int) -> dict[str, float] | None:
    """The forward and backward passes of one batch in ``accumulation`` micro-batches: the logged values, or None
    when a loss is not finite."""
    from trainables.loop import _all_finite

    optimizer.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    for xs in x.tensor_split(accumulation):
        share = len(xs) / len(x)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(xs.to(device), draws)
        loss = out["loss"].float()
        if not _all_finite(loss):
            return None
        scaler.scale(loss * share).backward()
        for key, value in out.items():
            logs[key] = logs.get(key, 0.0) + float(value.detach()) * share
    return logs
