"""Out of accelerator memory, a trial halves its micro-batch and accumulates gradients to the same batch
(trainables.loop.step_with_memory_retries). This machine has no GPU, and a CPU cannot run out of CUDA memory: the
tests raise torch's own ``torch.cuda.OutOfMemoryError`` at the point where the model would allocate (a forward
pre-hook on its first layer, for micro-batches larger than a set size), and run the real loop's step."""
from __future__ import annotations

import copy

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


def _trial(index):
    config = TrialConfig.from_dict({"data_index": str(index), "backbone": "video_vit_tiny", "batch_size": 8,
                                    "window_length": 16, "clip_len": 8, "ssts_stride": 1, "window_overlap": 0.75,
                                    "w_ccc": 0.0, "w_mse": 1.0, "lr": 1e-3, "seed": 0, "epochs": 1})
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
