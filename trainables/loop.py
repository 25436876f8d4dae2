"""The training loop: one trial's training, run in the Tune trial process (one worker) or on every worker of a Ray
Train TorchTrainer (see ``trainables.trial``).

Each epoch ends with an evaluation on the validation split's canonical label timeline, a search of post-processing on
those stored predictions (no retraining), and one report with a checkpoint, so ASHA can stop the trial between epochs
and a restarted trial resumes from the last epoch it finished.

Training knobs read from the trial config (all optional unless noted):
``lr`` (required), ``weight_decay``, ``batch_size`` (required), ``epochs`` (required), ``warmup_epochs`` (linear warmup,
then cosine decay to ``lr * min_lr_ratio``), ``grad_clip`` (max gradient norm; 0 = off), ``ema_decay`` (timm's weight
EMA; the EMA weights are evaluated and checkpointed), ``amp`` (mixed precision; on GPU only), ``target_multiplier``
(paper 003's x1 / x100: labels are scaled up for the loss, predictions scaled back before metrics),
``postprocess`` (search post-processing per epoch; default true), the loss weights (``w_ccc``, ``w_mse``, ``w_ce``,
``w_ncce`` and per-dimension ``w_<term>_<dim>``), the data knobs of ``ClipSpec`` and ``aug_*`` augmentation keys.
"""
from __future__ import annotations

import gc
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainables.data.augment import build_eval_transform, build_train_transform
from trainables.data.clips import ClipSpec, TrainWindows, predict_labels
from trainables.data.cache import load_split
from trainables.models import create_backbone
from trainables.objectives.losses import CompositeLoss, fit_bin_centroids_per_dim
from trainables.objectives.metrics import regression_report
from trainables.objectives.postprocess import PostProcess, compute_stats, search_postprocess

DIMS = ("valence", "arousal")
OBJECTIVE = "val_ccc_mean"
# Trial-config key -> backbone constructor argument. Keys a backbone does not take are not passed.
MODEL_KEYS = {"cnn": "cnn", "rnn": "rnn", "rnn_hidden": "hidden", "rnn_layers": "layers", "dropout": "dropout",
              "time_kernel": "time_kernel", "inflation_mode": "mode", "inflation_surround": "surround",
              "inflation_dilation": "dilation", "inflation_masking": "masking", "freeze": "freeze",
              "pretrained": "pretrained", "pretext_checkpoint": "pretext_checkpoint", "bidirectional": "bidirectional"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: dict, out_dims: int, in_chans: int = 3, n_bins: int = 0) -> torch.nn.Module:
    """The backbone named by ``config["backbone"]`` with the model knobs the config sets."""
    kwargs = {arg: config[key] for key, arg in MODEL_KEYS.items() if config.get(key) is not None}
    if isinstance(kwargs.get("dilation"), str):  # search spaces spell per-stage dilations "1-2-4-8"
        kwargs["dilation"] = [int(v) for v in kwargs["dilation"].split("-")]
    if n_bins:
        kwargs["n_bins"] = n_bins
    return create_backbone(config["backbone"], out_dims=out_dims, in_chans=in_chans, **kwargs)


def evaluate(model: torch.nn.Module, videos: list, spec: ClipSpec, device: torch.device, seed: int = 0,
             transform=None, multiplier: float = 1.0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics on the canonical label timeline: every label step of every video, predictions concatenated.

    Returns:
        (metrics with keys ``ccc_valence`` ... ``ccc_mean``, per-video predictions (L, D) on the label timeline).
    """
    preds = {v.video_id: predict_labels(model, v, spec, device, seed=seed, transform=transform) / multiplier
             for v in videos}
    y_true = np.concatenate([v.labels for v in videos])
    y_pred = np.concatenate([preds[v.video_id] for v in videos])
    if not np.isfinite(y_pred).all():
        raise Diverged("the model predicts NaN or inf on the validation videos")
    scale = tuple(videos[0].meta.get("label_scale", (-1.0, 1.0)))
    # Metrics on [-1, 1] always; on the dataset's own scale too when it differs (e.g. AFEW-VA's [-10, 10]).
    native = None if scale == (-1.0, 1.0) else scale
    return regression_report(y_true, y_pred, dims=DIMS[: y_true.shape[1]], scale=native, include_mape=True), preds


class Diverged(FloatingPointError):
    """The weights blew up: a non-finite loss, or non-finite predictions."""


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop_per_worker(config: dict) -> None:
    """Train one configuration on every worker of a Ray Train ``TorchTrainer`` (the ``train`` executor)."""
    from trainables.session import TrainWorkerSession

    fit(config, TrainWorkerSession())


def train_in_trial(config: dict) -> None:
    """Train one single-worker configuration in the Tune trial process itself (the ``inline`` executor)."""
    from trainables.session import TuneTrialSession

    try:
        fit(config, TuneTrialSession(gpus=float(config.get("gpus", 0) or 0)))
    finally:
        # The process serves the next trial too: give back what this one cached on the GPU.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fit(config: dict, session) -> None:
    """Train one configuration, reporting to ``session`` (a ``trainables.session`` object) after every fidelity unit."""
    rank = session.rank
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    seed = int(config.get("seed", 0))
    seed_everything(seed + rank)

    # One index, or one per registration setting (a study that searches the registration, SPEC 000).
    index = config["data_indexes"][config["registration"]] if "data_indexes" in config else config["data_index"]
    spec = ClipSpec.from_config(config)
    train_videos, val_videos = load_split(index, "train"), load_split(index, "val")
    frame_hw = tuple(train_videos[0].frames.shape[1:3])
    in_chans = int(train_videos[0].frames.shape[3])
    train_set = TrainWindows(train_videos, spec, seed=seed + rank,
                             transform=build_train_transform(config, frame_size=frame_hw))
    eval_transform = build_eval_transform(config, frame_size=frame_hw)
    out_dims = int(train_set.labels.shape[1])
    dims = DIMS[:out_dims] if out_dims <= len(DIMS) else tuple(str(i) for i in range(out_dims))
    multiplier = float(config.get("target_multiplier", 1.0))

    def weighted(term: str) -> bool:
        return any(float(v or 0) > 0 for k, v in config.items() if k == f"w_{term}" or k.startswith(f"w_{term}_"))

    centroids = None
    if weighted("ncce"):  # k-means (k = 20) centroids of the training labels, per dimension (paper 001)
        centroids = fit_bin_centroids_per_dim(np.concatenate([v.labels for v in train_videos]), k=20, seed=seed)
    loss_fn = CompositeLoss.from_config(config, dims, centroids=centroids)
    n_bins = 20 if weighted("ce") or weighted("ncce") else 0

    batch_size = int(config["batch_size"])
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                                         drop_last=len(train_set) > batch_size)
    loader = session.prepare_data_loader(loader)
    model = session.prepare_model(build_model(config, out_dims, in_chans, n_bins))
    device = session.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config.get("weight_decay", 1e-4)))
    epochs = int(config["epochs"])
    steps_per_epoch = max(1, len(loader))
    warmup = int(float(config.get("warmup_epochs", 0)) * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, epochs * steps_per_epoch, warmup, float(config.get("min_lr_ratio", 0.01))))
    ema = None
    if config.get("ema_decay"):
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(_unwrap(model), decay=float(config["ema_decay"]))
    use_amp = bool(config.get("amp", True)) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    grad_clip = float(config.get("grad_clip", 0) or 0)
    label_stats = compute_stats(np.concatenate([v.labels for v in train_videos]))

    # Reports: one per epoch, or ``reports_per_epoch`` per epoch when the sweep's fidelity is a data fraction (each
    # report then follows 1/k of an epoch's batches, so ASHA can stop a trial before its first full epoch).
    per_epoch = max(1, int(config.get("reports_per_epoch", 1)))
    total_units = int(config.get("max_units", epochs * per_epoch))
    unit = 0
    state = session.load_state(device)
    if state is not None:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        unit = int(state.get("unit", int(state["epoch"]) * per_epoch))

    while unit < total_units:
        epoch, part = divmod(unit, per_epoch)
        train_set.set_epoch(epoch)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        generator.manual_seed(seed * 1000 + epoch)
        bounds = np.linspace(0, len(loader), per_epoch + 1).round().astype(int)
        batches = iter(loader)
        for _ in range(bounds[part]):  # resuming inside an epoch: the same shuffled order, already trained part
            next(batches)
        while part < per_epoch and unit < total_units:
            t0 = time.perf_counter()
            losses, clips, diverged, train_preds = [], 0, False, []
            model.train()
            for _ in range(bounds[part + 1] - bounds[part]):
                x, y = next(batches)
                x, y = x.to(device), y.to(device) * multiplier
                with torch.autocast(device_type=device.type, enabled=use_amp):
                    out = model(x)
                    pred = out["frames"] if spec.target == "sequence" else out["window"]
                    logits = out.get("frame_logits" if spec.target == "sequence" else "logits")
                    loss = loss_fn(pred.float(), y, logits=None if logits is None else logits.float())
                if not _all_finite(loss):
                    diverged = True
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update(_unwrap(model))
                losses.append(float(loss.detach()))
                train_preds.append(pred.detach().float().reshape(-1, pred.shape[-1]).cpu().numpy() / multiplier)
                clips += len(x)
            train_time = time.perf_counter() - t0
            unit, part = unit + 1, part + 1
            progress = {"epoch": epoch + 1, "step": unit, "data_fraction": unit / per_epoch}
            eval_model = ema.module if ema is not None else _unwrap(model)
            if not diverged:
                try:
                    metrics, preds = evaluate(eval_model, val_videos, spec, device, seed=seed,
                                              transform=eval_transform, multiplier=multiplier)
                except Diverged:
                    diverged = True
            if diverged:
                # A NaN/inf loss or prediction ends this trial, not the sweep: report it once with the objective at
                # its worst possible value (CCC >= -1) so the searcher learns the region is bad; no retry.
                session.report({**progress, "diverged": 1, OBJECTIVE: -1.0, "train_loss": math.nan})
                return

            report = {**progress, "train_loss": float(np.mean(losses)) if losses else math.nan,
                      "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time,
                      "clips_per_s": clips / max(train_time, 1e-9), "lr": scheduler.get_last_lr()[0],
                      **{f"val_{k}_raw": v for k, v in metrics.items()}}
            post = PostProcess()
            if config.get("postprocess", True):
                truth = {v.video_id: v.labels for v in val_videos}
                # Paper 003 takes the prediction statistics (scale normalisation, mean filtering) from the training
                # set; judgment call: they come from the predictions made on the training clips just seen, which
                # costs nothing extra. Taking them from the validation predictions would fit the scale on the data it
                # is scored on.
                pred_stats = compute_stats(np.concatenate(train_preds)) if train_preds else None
                post, metrics = search_postprocess(preds, truth, label_stats, pred_stats, dims=dims)
                preds = {vid: post.apply(p) for vid, p in preds.items()}
            report.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            _report_with_checkpoint(session, report, {
                # "model": the trained weights (resumed from); "eval_model": what was evaluated and what prediction
                # uses (the EMA weights when EMA is on).
                "model": _unwrap(model).state_dict(), "eval_model": eval_model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema else None, "epoch": unit // per_epoch, "unit": unit, "config": config,
                "postprocess": post.to_dict(), "in_chans": in_chans, "out_dims": out_dims, "n_bins": n_bins,
            }, preds, post)


def _report_with_checkpoint(session, report: dict, state: dict, preds: dict, post: PostProcess) -> None:
    """Report on every worker; rank 0 attaches the checkpoint (weights, optimiser, post-processing, validation
    predictions on the label timeline)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if session.rank == 0:
            folder = Path(tmp)
            torch.save(state, folder / "state.pt")
            np.savez_compressed(folder / "val_predictions.npz", **preds)
            (folder / "metrics.json").write_text(json.dumps(report, indent=1))
            (folder / "postprocess.json").write_text(json.dumps(post.to_dict(), indent=1))
        session.report(report, checkpoint_dir=folder)


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every worker (all workers must agree, or DDP would hang on the next step)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
