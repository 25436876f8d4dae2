"""The Ray Train worker loop: one trial's training, run on every worker of a TorchTrainer.

Each epoch ends with an evaluation on the validation split's canonical label timeline and one
``ray.train.report(metrics, checkpoint)``, so ASHA can stop the trial between epochs and a restarted worker resumes
from the last epoch it finished.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainables.data.clips import ClipSpec, TrainWindows, predict_timeline
from trainables.data.prepare import load_split
from trainables.models import create_backbone
from trainables.objectives.losses import CompositeLoss
from trainables.objectives.metrics import regression_report

DIMS = ("valence", "arousal")
OBJECTIVE = "val_ccc_mean"
MODEL_KEYS = {"cnn": "cnn", "rnn": "rnn", "rnn_hidden": "hidden", "rnn_layers": "layers", "dropout": "dropout"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: dict, out_dims: int) -> torch.nn.Module:
    """The backbone named by ``config["backbone"]`` with the model knobs the config sets."""
    kwargs = {arg: config[key] for key, arg in MODEL_KEYS.items() if key in config}
    return create_backbone(config["backbone"], out_dims=out_dims, **kwargs)


def evaluate(model: torch.nn.Module, videos: list, spec: ClipSpec, device: torch.device, seed: int = 0
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics on the canonical label timeline: every label step of every video, predictions concatenated.

    Returns:
        (metrics with keys ``ccc_valence`` ... ``ccc_mean``, per-video predictions (T, D)).
    """
    preds = {v.video_id: predict_timeline(model, v, spec, device, seed=seed) for v in videos}
    y_true = np.concatenate([v.labels for v in videos])
    y_pred = np.concatenate([preds[v.video_id] for v in videos])
    return regression_report(y_true, y_pred, dims=DIMS[: y_true.shape[1]]), preds


def train_loop_per_worker(config: dict) -> None:
    """Train one configuration; runs inside a Ray Train worker (see ``trainables.trial``)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    seed = int(config.get("seed", 0))
    seed_everything(seed + rank)

    index = config["data_index"]
    spec = ClipSpec.from_config(config)
    train_set = TrainWindows(load_split(index, "train"), spec, seed=seed + rank)
    val_videos = load_split(index, "val")
    out_dims = int(train_set.labels.shape[1])

    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=int(config["batch_size"]), shuffle=True,
                                         generator=generator, drop_last=len(train_set) > int(config["batch_size"]))
    loader = ray.train.torch.prepare_data_loader(loader)
    model = ray.train.torch.prepare_model(build_model(config, out_dims))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]),
                                  weight_decay=float(config.get("weight_decay", 1e-4)))
    loss_fn = CompositeLoss(w_ccc=float(config.get("w_ccc", 1.0)), w_mse=float(config.get("w_mse", 0.0)),
                            dim_names=DIMS[:out_dims])
    epochs = int(config["epochs"])

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])

    for epoch in range(start_epoch, epochs):
        train_set.set_epoch(epoch)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        generator.manual_seed(seed * 1000 + epoch)
        model.train()
        t0 = time.perf_counter()
        losses, clips = [], 0
        diverged = False
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x)["window"], y)
            if not _all_finite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            clips += len(x)
        train_time = time.perf_counter() - t0
        if diverged:
            # A NaN/inf loss ends this trial, not the sweep: report it once with the objective at its worst
            # possible value (CCC >= -1) so the searcher learns the region is bad, and stop without retrying.
            ray.train.report({"epoch": epoch + 1, "diverged": 1, OBJECTIVE: -1.0, "train_loss": math.nan})
            return

        metrics, preds = evaluate(_unwrap(model), val_videos, spec, device, seed=seed)
        val_metrics = {f"val_{k}": v for k, v in metrics.items()}
        report = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else math.nan,
                  "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time,
                  "clips_per_s": clips / max(train_time, 1e-9), **val_metrics}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": epoch + 1, "config": config}, Path(tmp) / "state.pt")
                np.savez_compressed(Path(tmp) / "val_predictions.npz", **preds)
                (Path(tmp) / "metrics.json").write_text(json.dumps(report, indent=1))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=ckpt)


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every worker (all workers must agree, or DDP would hang on the next step)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
