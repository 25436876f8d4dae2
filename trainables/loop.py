"""The training loop: one trial's training, run in the Tune trial process (one worker) or on every worker of a Ray
Train TorchTrainer (see ``trainables.trial``).

Each report (an epoch, or a fraction of one with a data-fraction fidelity) ends with an evaluation on the validation
split's canonical label timeline, a search of post-processing on those stored predictions (no retraining), and one
report with a checkpoint, so ASHA can stop the trial between reports and a restarted trial resumes where it stopped.

The stages, in the order a trial runs them: :func:`build_trial` (data, model, optimiser, loss from the typed
:class:`~trainables.config.TrialConfig`), :func:`train_unit` (the batches of one report), :func:`evaluate` (the
validation timeline), :func:`score_and_report` (post-processing, metrics, checkpoint). :func:`fit` strings them together.
"""
from __future__ import annotations

import gc
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data.augment import build_eval_transform, build_train_transform
from trainables.data.clips import ClipSpec, TrainWindows, predict_labels
from trainables.data.cache import load_split
from trainables.models import create_backbone
from trainables.objectives.losses import CompositeLoss, fit_bin_centroids_per_dim
from trainables.objectives.metrics import regression_report
from trainables.objectives.postprocess import PostProcess, compute_stats, search_postprocess
from trainables.reports import DIMS



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrialConfig, out_dims: int, in_chans: int = 3, n_bins: int = 0) -> torch.nn.Module:
    """The backbone named by ``config.backbone`` with the constructor arguments the config sets and it takes."""
    return create_backbone(config.backbone, out_dims=out_dims, in_chans=in_chans,
                           **config.model_kwargs(), **({"n_bins": n_bins} if n_bins else {}))


def worst_value(metric: str, mode: str) -> float:
    """The objective a diverged trial reports: the worst value the metric can take (CCC and PCC lie in [-1, 1])."""
    bounded = any(part in metric for part in ("ccc", "pcc"))
    if mode == "max":
        return -1.0 if bounded else -math.inf
    return 1.0 if bounded else math.inf


def _label_faces(video) -> np.ndarray:
    """(L,) bool: whether each label step's frame holds a face."""
    valid = np.asarray(video.valid, dtype=bool)
    return valid[np.clip(np.asarray(video.label_frames), 0, len(valid) - 1)]


def scored_targets(videos: list, rule: str = "model") -> dict[str, np.ndarray]:
    """The targets each video is scored on under the trial's rule for label steps without a face: its labels, or for
    ``affwild2`` (paper 004) its labels with the steps before its first face set to NaN (not scored: Aff-Wild2
    predicts -5 there), which every metric and the post-processing search drop."""
    if rule == "model":
        return {v.video_id: v.labels for v in videos}
    truth = {}
    for v in videos:
        target = np.array(v.labels, dtype=np.float32)
        target[~np.maximum.accumulate(_label_faces(v))] = np.nan
        truth[v.video_id] = target
    return truth


def faceless_rule(videos: list, preds: dict[str, np.ndarray], rule: str = "model"):
    """(predictions, scored targets) per video under the trial's rule for label steps without a face.

    ``model``: both unchanged. ``affwild2`` (paper 004): a step without a face repeats the prediction of the latest
    step with one; the steps before a video's first face are not scored (:func:`scored_targets`), and their
    predictions stay the model's (finite), as the post-processing is fitted over whole videos.
    """
    truth = scored_targets(videos, rule)
    if rule == "model":
        return preds, truth
    from trainables.objectives.affwild2 import fill_faceless

    out = {}
    for v in videos:
        face = _label_faces(v)
        before_first = ~np.maximum.accumulate(face)
        filled = fill_faceless(preds[v.video_id], face).astype(preds[v.video_id].dtype)
        filled[before_first] = preds[v.video_id][before_first]
        out[v.video_id] = filled
    return out, truth


def evaluate(model: torch.nn.Module, videos: list, spec: ClipSpec, device: torch.device, seed: int = 0,
             transform=None, multiplier: float = 1.0,
             faceless: str = "model") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics on the canonical label timeline: every label step of every video, predictions concatenated, after the
    trial's rule for steps without a face (:func:`faceless_rule`).

    Returns:
        (metrics with keys ``ccc_valence`` ... ``ccc_mean``, per-video predictions (L, D) on the label timeline).
    """
    preds = {v.video_id: predict_labels(model, v, spec, device, seed=seed, transform=transform) / multiplier
             for v in videos}
    preds, truth = faceless_rule(videos, preds, faceless)
    y_true = np.concatenate([truth[v.video_id] for v in videos])
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
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``.

    Step ``s`` (counted in optimizer steps) trains at ``(s + 1) / warmup`` of each group's lr while ``s < warmup``
    (so the last warmup step is at the full lr), then at ``min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2`` with
    ``p = (s - warmup) / (total - warmup)``, held at ``min_ratio`` past ``total``. A factor, so every layer-decay
    group ends at ``min_ratio`` of its own lr.

    Kept by hand inside ``torch.optim.lr_scheduler.LambdaLR`` because neither library schedule gives these numbers
    (measured with lr 1e-3, 100 steps, warmup 10, min_ratio 0.01, groups at lr scale 1 and 0.25):

    - ``SequentialLR(LinearLR(1 / warmup -> 1 over warmup - 1 steps), CosineAnnealingLR(T_max=total - warmup,
      eta_min=min_ratio * lr))``: the head group agrees to 4e-15 (relative), but ``eta_min`` is one absolute floor
      for every group: the 0.25 group ends at 1.0e-5 instead of 2.5e-6 and is 3 % high half-way (1.300e-4 against
      1.2625e-4).
    - timm's ``CosineLRScheduler(t_initial=total - warmup, lr_min=min_ratio * lr, warmup_t=warmup,
      warmup_lr_init=lr / warmup, warmup_prefix=True, t_in_epochs=False)``, with the groups' ``lr_scale``: the cosine
      agrees, but its warmup ``init + s (lr - init) / warmup`` reaches lr only at step ``warmup``: step ``warmup - 1``
      trains at 0.91 lr instead of lr. No ``warmup_t`` / ``warmup_lr_init`` gives ``(s + 1) / warmup`` and then a
      cosine that starts at step ``warmup``.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                  min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The trial's schedule: every parameter group's lr times :func:`lr_factor`, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, min_ratio))


def train_loop_per_worker(config: dict) -> None:
    """Train one configuration on every worker of a Ray Train ``TorchTrainer`` (the ``train`` executor)."""
    from trainables.session import TrainWorkerSession

    fit(config, TrainWorkerSession())


def train_in_trial(config: dict, marks: dict[str, float] | None = None) -> None:
    """Train one single-worker configuration in the Tune trial process itself (the ``inline`` executor). ``marks``:
    wall-clock times of the trial's start-up so far (``trainables.trial``), reported with every result."""
    from trainables.session import TuneTrialSession

    from trainables.costs import reset_peak_memory

    session = TuneTrialSession(gpus=float(config.get("gpus", 0) or 0))
    session.marks.update(marks or {})
    reset_peak_memory(session.device)  # this process may have served other trials
    try:
        fit(config, session)
    finally:
        # The process serves the next trial too: give back what this one cached on the GPU.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class Trial:
    """Everything :func:`build_trial` sets up for one worker, used by the later stages."""

    config: TrialConfig
    session: Any
    spec: ClipSpec
    val_videos: list
    train_set: TrainWindows
    loader: Any
    generator: torch.Generator
    eval_transform: Any
    dims: tuple[str, ...]
    model: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    scaler: Any
    use_amp: bool
    loss_fn: CompositeLoss
    label_stats: Any
    checkpoint_meta: dict
    costs: dict = None  # measured once when the trial is built (trainables.costs)
    loaded: dict = None  # what the model's checkpoints gave it (:func:`checkpoint_counts`), reported every time
    train_seconds: float = 0.0
    accumulation: int = 1  # micro-batches per optimizer step (doubled after each out-of-memory error)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and checkpointed for prediction: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else _unwrap(self.model)


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray): the sweep records where each trial ran (several nodes of
    one machine share its IP address, so the IP alone does not tell them apart)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        return ""


def optimizer_groups(model: torch.nn.Module, config: TrialConfig) -> list:
    """AdamW's parameter groups: every trainable parameter at ``lr``, or, for a video transformer with
    ``layer_decay`` < 1, one group per depth with the layer-wise decayed rate (BEiT / VideoMAE / SVFAP fine-tuning)."""
    if config.layer_decay < 1.0 and callable(getattr(model, "layer_id", None)):
        from trainables.models.video_vit import layer_decay_groups

        return layer_decay_groups(model, config.lr, config.weight_decay, config.layer_decay)
    return [p for p in model.parameters() if p.requires_grad]


def build_trial(config: TrialConfig, session, videos: tuple[list, list] | None = None,
                costs: dict | None = None) -> Trial:
    """Data, model, optimiser, schedule and loss of one configuration on this worker. ``videos``: (training,
    validation) videos, when not the index's train and val splits (a fold of a cross-validated trial; a refit, which
    validates on nothing). ``costs``: the configuration's costs when already measured (the same model on another fold;
    {} for a refit, whose reports carry none); None measures them (:func:`measure_costs`)."""
    rank, seed = session.rank, config.seed
    torch.set_num_threads(config.threads)
    seed_everything(seed + rank)
    spec = config.clip_spec()
    if videos is None:
        videos = load_split(config.index_path, "train"), load_split(config.index_path, "val")
    train_videos, val_videos = videos
    frame_hw = tuple(train_videos[0].frames.shape[1:3])
    in_chans = int(train_videos[0].frames.shape[3])
    train_set = TrainWindows(train_videos, spec, seed=seed + rank,
                             transform=build_train_transform(config.augmentations(), frame_size=frame_hw))
    out_dims = int(train_set.labels.shape[1])
    dims = DIMS[:out_dims] if out_dims <= len(DIMS) else tuple(str(i) for i in range(out_dims))

    centroids = None
    if config.weighted("ncce"):  # k-means (k = 20) centroids of the training labels, per dimension (paper 001)
        centroids = fit_bin_centroids_per_dim(np.concatenate([v.labels for v in train_videos]), k=20, seed=seed)
    loss_fn = CompositeLoss.from_config(config.loss_weights(), dims, centroids=centroids)
    n_bins = 20 if config.weighted("ce") or config.weighted("ncce") else 0

    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
                                         drop_last=len(train_set) > config.batch_size)
    loader = session.prepare_data_loader(loader)
    model = session.prepare_model(build_model(config, out_dims, in_chans, n_bins))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(optimizer_groups(_unwrap(model), config), lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(loader))
    warmup = int(config.warmup_epochs * steps_per_epoch)
    scheduler = warmup_cosine(optimizer, config.epochs * steps_per_epoch, warmup, config.min_lr_ratio)
    ema = None
    if config.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(_unwrap(model), decay=config.ema_decay)
    use_amp = config.amp and session.device.type == "cuda"
    trial = Trial(config=config, session=session, spec=spec, val_videos=val_videos, train_set=train_set, loader=loader,
                 generator=generator, eval_transform=build_eval_transform(config.augmentations(), frame_size=frame_hw),
                 dims=dims, model=model, params=params, optimizer=optimizer, scheduler=scheduler, ema=ema,
                 scaler=torch.amp.GradScaler("cuda", enabled=use_amp), use_amp=use_amp, loss_fn=loss_fn,
                 label_stats=compute_stats(np.concatenate([v.labels for v in train_videos])),
                 checkpoint_meta={"in_chans": in_chans, "out_dims": out_dims, "n_bins": n_bins})
    trial.costs = measure_costs(trial) if costs is None else costs
    trial.loaded = checkpoint_counts(_unwrap(model))
    return trial


#: Model keys a checkpoint is not expected to fill: the task heads, fresh for these targets.
_FRESH_HEADS = ("head.", "cls_head.", "bins.", "gru.")


def checkpoint_counts(model: torch.nn.Module) -> dict[str, int]:
    """What the checkpoints loaded into ``model`` at construction gave it (its ``load_report`` / ``load_reports``):
    ``ckpt_loaded_keys`` and ``ckpt_missing_keys``, the model keys the files had nothing for besides the fresh task
    heads (0 when a pretrained encoder was matched completely); {} without a checkpoint."""
    reports = [r for r in (getattr(model, "load_report", None), *getattr(model, "load_reports", {}).values()) if r]
    if not reports:
        return {}
    missing = [k for r in reports for k in r.missing if not k.startswith(_FRESH_HEADS)]
    return {"ckpt_loaded_keys": sum(len(r.loaded) for r in reports), "ckpt_missing_keys": len(missing),
            "ckpt_unexpected_keys": sum(len(r.unexpected) for r in reports)}


def measure_costs(t: Trial) -> dict[str, Any]:
    """The costs known before training (``trainables.costs``): parameters, GFLOPs and inference ms of one window at
    the trial's input shape, on the trial's device."""
    from trainables.costs import count_gflops, inference_ms, parameters_m

    model = t.eval_model
    window = t.train_set[0][0].unsqueeze(0).to(t.session.device)
    return {"params_m": parameters_m(model), "gflops": count_gflops(model, window),
            "infer_ms": inference_ms(model, window), "cost_device": t.session.device.type}


@dataclass
class UnitResult:
    """What the batches of one report produced."""

    losses: list
    clips: int
    train_preds: list
    train_time: float
    diverged: bool = False
    stopped: bool = False


def train_unit(t: Trial, batches, n_batches: int) -> UnitResult:
    """Train on the next ``n_batches`` of ``batches``. Ends early on a non-finite loss (``diverged``) or when the
    session asks the trial to stop (``stopped``: a stopped trial's thread must end promptly, its process serves the
    next trial)."""
    device, multiplier = t.session.device, t.config.target_multiplier
    sequence = t.spec.target == "sequence"
    stop_requested = getattr(t.session, "should_stop", None) or (lambda: False)
    out = UnitResult([], 0, [], 0.0)
    t0 = time.perf_counter()
    t.model.train()
    for _ in range(n_batches):
        if stop_requested():
            out.stopped = True
            break
        x, y = next(batches)
        x, y = x.to(device), y.to(device) * multiplier
        loss, pred = step_with_memory_retries(t, x, y, sequence)
        if loss is None:
            out.diverged = True
            break
        out.losses.append(loss)
        out.train_preds.append(pred)
        out.clips += len(x)
    out.train_time = time.perf_counter() - t0
    return out


@dataclass
class Scored:
    """One unit evaluated: its report (progress, training figures, ``val_*`` metrics after post-processing), the
    validation predictions on the label timeline before (``raw``) and after post-processing, the fitted
    post-processing, and the statistics of the training predictions it used."""

    report: dict
    raw: dict
    preds: dict
    post: PostProcess
    pred_stats: Any


#: How many times a trial halves its micro-batch after running out of accelerator memory before it gives up.
MAX_MEMORY_RETRIES = 3


def step_with_memory_retries(t: Trial, x: torch.Tensor, y: torch.Tensor, sequence: bool):
    """One optimizer step on the batch ``(x, y)``; (loss, predictions) or (None, None) when the loss is not finite.

    Out of accelerator memory in the forward or backward pass, the batch is taken again in smaller micro-batches
    (:func:`retry_out_of_memory`), each micro-batch's loss weighted by its share of the batch, so every optimizer step
    still sees the trial's ``batch_size`` samples. The split is reported (``micro_batch_size``, ``memory_retries``).
    What is not identical to the whole batch: a batch-level loss (the CCC term is computed over each micro-batch, not
    the batch) and BatchNorm's batch statistics (from the micro-batch; a failed attempt's forward has already moved
    BatchNorm's running statistics once); MSE-like losses and LayerNorm models give the same gradients up to rounding.
    """
    total, preds = retry_out_of_memory(t, lambda: _backward(t, x, y, sequence), t.optimizer, len(x))
    if total is None:
        return None, None
    optimizer_step(t.scaler, t.optimizer, t.params, t.config.grad_clip)
    t.scheduler.step()
    if t.ema is not None:
        t.ema.update(_unwrap(t.model))
    return total, preds


@dataclass
class MicroBatches:
    """How many micro-batches an optimizer step is split into: doubled after each out-of-memory error."""

    accumulation: int = 1


def split_report(batch_size: int, accumulation: int) -> dict[str, int]:
    """What a trial reports of its micro-batch split (``cluster.tracking`` tags a run that has one)."""
    return {"micro_batch_size": -(-batch_size // accumulation), "memory_retries": int(math.log2(accumulation))}


def retry_out_of_memory(split, attempt: Callable[[], Any], optimizer: torch.optim.Optimizer, batch: int,
                        before_retry: Callable[[], None] | None = None) -> Any:
    """``attempt()`` (a batch's forward and backward passes in ``split.accumulation`` micro-batches, gradients
    accumulated), taken again with ``split.accumulation`` doubled whenever it runs out of accelerator memory
    (``torch.cuda.OutOfMemoryError``), at most :data:`MAX_MEMORY_RETRIES` times, never beyond one clip per
    micro-batch (``batch`` clips), and only in a one-worker trial; after that the error ends the trial (it is retried
    from its checkpoint like a crash). The split stays for the rest of the trial. ``before_retry`` undoes what the
    failed attempt left besides gradients (which are cleared here).

    Only the passes are retried: the optimizer step comes after (:func:`optimizer_step`), so a retry never meets a
    GradScaler that has unscaled or stepped already, and never steps twice. Memory is given back once the ``except``
    block is left: inside it, the traceback still holds the failed attempt's frames and their activations."""
    while True:
        try:
            return attempt()
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            # DDP: the workers must run the same number of backward passes per step (each one all-reduces), and only
            # this one ran out of memory, so a multi-worker trial ends here (retried from its checkpoint).
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1
            if distributed or split.accumulation >= 2 ** MAX_MEMORY_RETRIES or split.accumulation * 2 > batch:
                raise
            split.accumulation *= 2
        if before_retry is not None:
            before_retry()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def optimizer_step(scaler, optimizer: torch.optim.Optimizer, params: list, grad_clip: float) -> None:
    """The optimizer step after a batch's backward passes: gradients unscaled and clipped to norm ``grad_clip`` (when
    > 0), then the GradScaler's step (skipped on inf/NaN gradients under AMP) and its scale update."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _backward(t: Trial, x: torch.Tensor, y: torch.Tensor, sequence: bool):
    """The forward and backward passes of one batch in ``t.accumulation`` micro-batches: (loss, predictions), or
    (None, None) when a loss is not finite."""
    device, multiplier = t.session.device, t.config.target_multiplier
    t.optimizer.zero_grad(set_to_none=True)
    total, preds = 0.0, []
    for xs, ys in zip(x.tensor_split(t.accumulation), y.tensor_split(t.accumulation)):
        with torch.autocast(device_type=device.type, enabled=t.use_amp):
            res = t.model(xs)
            pred = res["frames"] if sequence else res["window"]
            logits = res.get("frame_logits" if sequence else "logits")
            loss = t.loss_fn(pred.float(), ys, logits=None if logits is None else logits.float())
        if not _all_finite(loss):
            return None, None
        t.scaler.scale(loss * (len(xs) / len(x))).backward()
        total += float(loss.detach()) * len(xs) / len(x)
        preds.append(pred.detach().float().reshape(-1, pred.shape[-1]).cpu().numpy() / multiplier)
    return total, np.concatenate(preds)


def score_unit(t: Trial, unit: int, per_epoch: int, result: UnitResult, t0: float) -> tuple[dict, Scored | None]:
    """Evaluate one unit and search its post-processing. Returns (progress keys, the scored unit), the latter None
    when the trial diverged."""
    config = t.config
    # worker_pid: the process that trains (the inline trial's own, or Ray Train's rank-0 worker); Tune's "pid" is the
    # trial process, which with Ray Train only waits for its workers. Tests end exactly this process.
    # unit_started_at and the session's marks (wall-clock seconds): where a trial's time outside its epochs goes
    # (benchmarks/bench_sweep_overhead.py).
    progress = {"epoch": (unit - 1) // per_epoch + 1, "step": unit, "data_fraction": unit / per_epoch,
                "node_id": _node_id(), "worker_pid": os.getpid(),
                "unit_started_at": time.time() - (time.perf_counter() - t0), **t.session.marks}
    metrics = preds = None
    if not result.diverged:
        try:
            metrics, preds = evaluate(t.eval_model, t.val_videos, t.spec, t.session.device, seed=config.seed,
                                      transform=t.eval_transform, multiplier=config.target_multiplier,
                                      faceless=config.faceless)
        except Diverged:
            pass
    if metrics is None:
        return progress, None
    from trainables.costs import peak_memory_mb

    t.train_seconds += result.train_time
    report = {**progress, **(t.costs or {}), **(t.loaded or {}), "train_s": t.train_seconds,
              **split_report(t.config.batch_size, t.accumulation),
              "peak_mem_mb": peak_memory_mb(t.session.device),
              "train_loss": float(np.mean(result.losses)) if result.losses else math.nan,
              "epoch_time_s": time.perf_counter() - t0, "train_time_s": result.train_time,
              "clips_per_s": result.clips / max(result.train_time, 1e-9), "lr": t.scheduler.get_last_lr()[0],
              **{f"val_{k}_raw": v for k, v in metrics.items()}}
    post, raw, pred_stats = PostProcess(), preds, None
    if config.postprocess:
        truth = scored_targets(t.val_videos, config.faceless)
        # Paper 003 takes the prediction statistics (scale normalisation, mean filtering) from the training set;
        # judgment call: they come from the predictions made on the training clips just seen, which costs nothing
        # extra. Taking them from the validation predictions would fit the scale on the data it is scored on.
        pred_stats = compute_stats(np.concatenate(result.train_preds)) if result.train_preds else None
        post, metrics = search_postprocess(preds, truth, t.label_stats, pred_stats, dims=t.dims)
        preds = {vid: post.apply(p) for vid, p in preds.items()}
    report.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return progress, Scored(report, raw, preds, post, pred_stats)


def report_diverged(t: Trial, progress: dict) -> None:
    """A NaN/inf loss or prediction ends this trial, not the sweep: it is reported once with the objective at its
    worst value so the searcher learns the region is bad; no retry."""
    report_diverged_to(t.session, t.config, progress)


def report_diverged_to(session, config: TrialConfig, progress: dict, loss_key: str = "train_loss") -> None:
    """:func:`report_diverged` for any trial's ``session`` and ``config`` (a pretraining trial's too)."""
    session.report({**progress, "diverged": 1, config.metric: worst_value(config.metric, config.mode),
                    loss_key: math.nan})


def trial_state(t: Trial, unit: int, per_epoch: int, post: PostProcess) -> dict:
    """What a checkpoint holds: the trained weights (resumed from) and the evaluated ones (what prediction uses), the
    optimiser and schedule, the settings and the post-processing."""
    return {"model": _unwrap(t.model).state_dict(), "eval_model": t.eval_model.state_dict(),
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "ema": t.ema.state_dict() if t.ema else None, "epoch": unit // per_epoch, "unit": unit,
            "config": t.config.to_dict(), "postprocess": post.to_dict(), **t.checkpoint_meta}


def score_and_report(t: Trial, unit: int, per_epoch: int, result: UnitResult, t0: float) -> bool:
    """Evaluate, post-process and report one unit with its checkpoint. Returns False when the trial diverged (it is
    reported once with the objective at its worst value, and ends)."""
    progress, scored = score_unit(t, unit, per_epoch, result, t0)
    if scored is None:
        report_diverged(t, progress)
        return False
    report_with_checkpoint(t.session, scored.report, trial_state(t, unit, per_epoch, scored.post), scored.preds,
                           scored.post)
    return True


def restore(t: Trial, state: dict) -> None:
    """Load a checkpoint's weights, optimiser, schedule and EMA into the trial."""
    _unwrap(t.model).load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.ema is not None and state.get("ema") is not None:
        t.ema.load_state_dict(state["ema"])


def resume_unit(t: Trial, per_epoch: int) -> int:
    """Load the session's checkpoint, if any, into the trial; the number of units already done."""
    state = t.session.load_state(t.session.device)
    if state is None:
        return 0
    restore(t, state)
    return int(state.get("unit", int(state["epoch"]) * per_epoch))


def fit(config: dict, session) -> None:
    """Train one configuration, reporting to ``session`` (a ``trainables.session`` object) after every fidelity unit.

    ``config`` is checked into a :class:`TrialConfig`; keys that do not apply to the chosen backbone or sampler are
    dropped here without a word (the sweep's pre-flight check refused those the user set, and warned once about those
    from the study file).
    """
    session.marks.setdefault("fit_started_at", time.time())
    cfg = TrialConfig.from_dict(config, lenient=config.keys())
    if cfg.pretrain_method is not None:
        from trainables.pretrain.run import fit_pretrain

        fit_pretrain(cfg, session)
        return
    if cfg.cv is not None or cfg.refit is not None:
        from trainables.crossval import fit_folds, refit

        (fit_folds if cfg.cv is not None else refit)(cfg, session)
        return
    t = build_trial(cfg, session)
    # Reports: one per epoch, or ``reports_per_epoch`` per epoch when the sweep's fidelity is a data fraction (each
    # report then follows 1/k of an epoch's batches, so ASHA can stop a trial before its first full epoch).
    per_epoch = cfg.reports_per_epoch
    total_units = cfg.max_units or cfg.epochs * per_epoch
    unit = resume_unit(t, per_epoch)
    session.marks["built_at"] = time.time()
    while unit < total_units:
        epoch, part = divmod(unit, per_epoch)
        start_epoch(t.train_set, t.loader, t.generator, cfg.seed, epoch)
        bounds = np.linspace(0, len(t.loader), per_epoch + 1).round().astype(int)
        batches = iter(t.loader)
        for _ in range(bounds[part]):  # resuming inside an epoch: the same shuffled order, already trained part
            next(batches)
        while part < per_epoch and unit < total_units:
            t0 = time.perf_counter()
            result = train_unit(t, batches, bounds[part + 1] - bounds[part])
            if result.stopped:
                return
            unit, part = unit + 1, part + 1
            if not score_and_report(t, unit, per_epoch, result, t0):
                return


def start_epoch(dataset, loader, generator: torch.Generator, seed: int, epoch: int) -> None:
    """Set up epoch ``epoch`` (0-based) of a trial's data: the dataset's frame draws, a distributed sampler's shard
    order, and the shuffle generator, all from (seed, epoch), so an epoch is the same however the trial got there."""
    dataset.set_epoch(epoch)
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    generator.manual_seed(seed * 1000 + epoch)


def report_with_checkpoint(session, report: dict, state: dict, preds: dict, post: PostProcess,
                           extra: dict[str, Any] | None = None, weights: dict[str, Any] | None = None) -> None:
    """Report on every worker; rank 0 attaches the checkpoint (weights, optimiser, post-processing, validation
    predictions on the label timeline; ``extra``: more JSON files by name; ``weights``: more ``torch.save`` files by
    name, e.g. a pretrained encoder)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if session.rank == 0:
            folder = Path(tmp)
            started = time.perf_counter()
            torch.save(state, folder / "state.pt")
            np.savez_compressed(folder / "val_predictions.npz", **preds)
            report["checkpoint_write_s"] = time.perf_counter() - started
            (folder / "metrics.json").write_text(json.dumps(report, indent=1))
            (folder / "postprocess.json").write_text(json.dumps(post.to_dict(), indent=1))
            for name, value in (extra or {}).items():
                (folder / name).write_text(json.dumps(value, indent=1))
            for name, value in (weights or {}).items():
                torch.save(value, folder / name)
        session.report(report, checkpoint_dir=folder)


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every worker (all workers must agree, or DDP would hang on the next step)."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
