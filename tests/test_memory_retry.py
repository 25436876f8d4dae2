"""Out of accelerator memory, a trial halves its micro-batch and accumulates gradients to the same batch
(trainables.loop.step_with_memory_retries). This machine has no GPU, and a CPU cannot run out of CUDA memory: the
tests raise torch's own ``torch.cuda.OutOfMemoryError`` at the point where the model would allocate (a forward
pre-hook on its first layer, for micro-batches larger than a set size), and run the real loop's step."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from trainables.config import TrialConfig
from trainables.loop import MAX_MEMORY_RETRIES, build_trial, step_with_memory_retries


class CpuSession:
    """The loop's session interface on this process's CPU, without Ray (the trial is driven step by step here)."""

    rank = 0
    device = torch.device("cpu")

    def __init__(self):
        self.marks = {}

    def prepare_model(self, model, unused_parameters: bool = False):
        return model

    def prepare_data_loader(self, loader):
        return loader


def _trial(index, **settings):
    config = TrialConfig.from_dict({"data_index": str(index), "backbone": "video_vit_tiny", "batch_size": 8,
                                    "window_length": 16, "clip_len": 8, "ssts_stride": 1, "window_overlap": 0.75,
                                    "w_ccc": 0.0, "w_mse": 1.0, "lr": 1e-3, "seed": 0, "epochs": 1, **settings})
    return build_trial(config, CpuSession())


def _limit_memory(model, largest: int):
    """Raise CUDA's out-of-memory error where the model allocates for a micro-batch above ``largest`` clips."""
    def pre_hook(module, args):
        if args[0].shape[0] > largest:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d)).register_forward_pre_hook(pre_hook)


def test_a_step_out_of_memory_is_taken_again_in_smaller_micro_batches_with_the_same_update(prepared_index):
    whole, split = _trial(prepared_index), _trial(prepared_index)
    x, y = next(iter(whole.loader))
    assert len(x) == 8
    _limit_memory(split.model, largest=2)
    loss_whole, pred_whole = step_with_memory_retries(whole, x, y, sequence=False)
    loss_split, pred_split = step_with_memory_retries(split, x, y, sequence=False)
    assert whole.accumulation == 1 and split.accumulation == 4  # 8 -> 4 -> 2 clips: two retries
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    assert pred_split.shape == pred_whole.shape
    for a, b in zip(whole.model.parameters(), split.model.parameters()):  # MSE and LayerNorm: the same update
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The split stays: the next step goes straight to micro-batches of 2.
    step_with_memory_retries(split, x, y, sequence=False)
    assert split.accumulation == 4


def test_the_retries_end_after_three_halvings(prepared_index):
    t = _trial(prepared_index)
    x, y = next(iter(t.loader))
    _limit_memory(t.model, largest=0)
    before = copy.deepcopy(t.model.state_dict())
    with pytest.raises(torch.cuda.OutOfMemoryError):
        step_with_memory_retries(t, x, y, sequence=False)
    assert t.accumulation == 2 ** MAX_MEMORY_RETRIES == 8
    for key, value in t.model.state_dict().items():  # no step was taken
        torch.testing.assert_close(value, before[key])


def test_under_a_grad_scaler_the_retried_passes_step_once(prepared_index):
    """With gradient scaling and clipping on, a batch out of memory in its forward pass is retried and then stepped
    once: the GradScaler unscales once (a second unscale_ before update() is an error) and AdamW counts one step."""
    t = _trial(prepared_index, grad_clip=1.0)
    t.scaler = torch.amp.GradScaler("cpu", enabled=True)
    x, y = next(iter(t.loader))
    _limit_memory(t.model, largest=2)
    loss, _ = step_with_memory_retries(t, x, y, sequence=False)
    assert loss is not None and t.accumulation == 4
    assert {int(state["step"]) for state in t.optimizer.state.values()} == {1}


def test_out_of_memory_in_the_optimizer_step_is_not_retried(prepared_index):
    """The optimizer's own memory (AdamW's moments, allocated at its first step) does not shrink with the
    micro-batch, and a retry after a step could step twice: the error ends the step as a crash would."""
    t = _trial(prepared_index)
    x, y = next(iter(t.loader))

    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    t.optimizer.step = full
    with pytest.raises(torch.cuda.OutOfMemoryError):
        step_with_memory_retries(t, x, y, sequence=False)
    assert t.accumulation == 1


# --- pretraining: the same retries around a pretraining step ----------------------------------------------------------

def _pretraining_step(pretrainer, clips, seed: int, largest: int | None):
    """One optimizer step of ``pretrainer`` on ``clips`` as the pretraining loop takes it, out of memory above
    ``largest`` clips per micro-batch (None: never); returns (logged values, the micro-batch split)."""
    from trainables.loop import MicroBatches
    from trainables.pretrain.run import pretrain_step

    if largest is not None:
        _limit_memory(pretrainer, largest)
    params = [p for p in pretrainer.parameters() if p.requires_grad]
    split = MicroBatches()
    out = pretrain_step(pretrainer, pretrainer, clips, torch.Generator().manual_seed(seed),
                        torch.optim.AdamW(params, lr=1e-3), torch.amp.GradScaler("cuda", enabled=False), params, 0.0,
                        False, torch.device("cpu"), split)
    return out, split


def test_a_mae_step_out_of_memory_is_retried_in_micro_batches_with_the_same_masks_and_update():
    """MAE on a LayerNorm ViT: the masks are drawn micro-batch after micro-batch from the restored generator, every
    clip masks the same count, so the split step is the whole batch's up to rounding."""
    from tests.test_pretrain_mae import _clips, _pretrainer

    clips = _clips(batch=8)
    _, whole = _pretrainer("video_vit_tiny")
    _, split = _pretrainer("video_vit_tiny")
    out_whole, n_whole = _pretraining_step(whole, clips, seed=3, largest=None)
    out_split, n_split = _pretraining_step(split, clips, seed=3, largest=2)
    assert (n_whole.accumulation, n_split.accumulation) == (1, 4)
    assert out_split["loss"] == pytest.approx(out_whole["loss"], rel=1e-5)
    assert out_split["masked_share"] == pytest.approx(out_whole["masked_share"])
    for (name, a), b in zip(whole.named_parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_a_dino_step_retried_counts_each_teacher_output_once():
    """The failed attempts' teacher outputs are dropped (``forget_pending``): the centre moves by the mean of the
    batch's 2 x 8 global-view outputs only. The first attempt runs out of memory at once; the second (2 micro-batches)
    after its first micro-batch's teacher outputs were kept; the third (4 micro-batches) succeeds."""
    from tests.test_pretrain_ssl import build, make_clips

    clips = make_clips(batch=8)
    dino = build("dino")
    calls = []

    def pre_hook(module, args):  # the student's first 3D convolution: global views, then local ones
        calls.append(args[0].shape[0])
        if args[0].shape[0] > 8 or len(calls) == 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    next(m for m in dino.modules() if isinstance(m, torch.nn.Conv3d)).register_forward_pre_hook(pre_hook)
    _, n = _pretraining_step(dino, clips, seed=3, largest=None)
    assert n.accumulation == 4
    assert calls == [16, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4, 4, 4]  # attempt 2's first micro-batch went through
    assert dino._pending_count == 2 * 8


def test_pretraining_reports_its_micro_batches(prepared_index, tmp_path):
    """Out of memory above one clip from the first step on, a pretraining trial trains on in micro-batches of one
    clip (4 -> 2 -> 1: two retries) and reports the split."""
    from trainables.pretrain.run import fit_pretrain
    from tests.test_pretrain_run import RecordingSession

    cfg = TrialConfig.from_dict({"data_index": str(prepared_index), "backbone": "video_vit_tiny",
                                 "pretrain_method": "mae", "batch_size": 4, "window_length": 16, "clip_len": 4,
                                 "epochs": 1, "probe_epochs": 1, "seed": 0})
    session = RecordingSession()
    real = torch.nn.Conv3d.forward

    def limited(self, x):  # the training forward only: the frozen probe encodes without gradients
        if torch.is_grad_enabled() and x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Conv3d, "forward", limited)
        fit_pretrain(cfg, session)
    report = session.reports[-1]
    assert report["micro_batch_size"] == 1 and report["memory_retries"] == 2
    assert math.isfinite(report["pretrain_loss"])
