"""What a trial costs, measured in the trial: parameters, FLOPs per window, inference time per window, training time
and peak memory. Every trial reports them (``params_m``, ``gflops``, ``infer_ms``, ``train_s``, ``peak_mem_mb``,
with ``cost_device`` naming where they were measured), so a sweep can weigh accuracy against cost.

* ``params_m``: trainable and frozen parameters of the model, in millions.
* ``gflops``: floating-point operations (a multiply-add counts 2) of one forward pass of one training window at the
  trial's input shape (batch 1), counted by torch's ``FlopCounterMode``. Attention runs under the math kernel while it
  counts: a fused kernel counts 0 on the CPU. Backward costs about twice the forward; it is not added. What is
  counted: convolutions and linear layers (2 x multiply-adds, bias adds not counted), matrix products (attention's
  q.k and attention.v), and a GRU as its two matrix products per step, direction and layer (2 x (input x 3H) +
  2 x (H x 3H) per step: torch runs it as ``addmm``; gate nonlinearities and element-wise products not counted). On
  the CPU torch runs an LSTM as one ``mkldnn_rnn_layer`` kernel per layer and direction that ``FlopCounterMode`` does
  not know (it counted 0), so :data:`RNN_FORMULAS` counts it as a GRU is counted: 2 x (input x 4H) + 2 x (H x 4H)
  per step. Not counted at all: normalisation, activations, pooling, and FFTs (MIMAMO's steerable pyramid).
* ``infer_ms``: the median wall time of a forward pass of one window in eval mode, after warm-up, on the trial's
  device (CUDA synchronised around each pass); noisy on shared CPU cores, so it is measured and reported, not
  searched on.
* ``train_s``: seconds in training steps so far.
* ``peak_mem_mb``: on a GPU, CUDA's peak allocation since the trial started; on the CPU, the process's peak resident
  memory since the trial started (a reused trial process resets the kernel's high-water mark by writing ``5`` to
  ``/proc/self/clear_refs``; where that file is missing, the peak since the process started).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

__all__ = ["count_gflops", "inference_ms", "parameters_m", "peak_memory_mb", "reset_peak_memory"]

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def parameters_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """One LSTM layer in one direction on the CPU (``aten.mkldnn_rnn_layer``: input (T, B, in) or (B, T, in), the
    weights (4H, in) and (4H, H)): 2 x multiply-adds of its input and hidden products over every step."""
    steps = input_shape[0] * input_shape[1]
    return 2 * steps * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


#: Kernels ``FlopCounterMode`` does not count, and their formulas (module docstring).
RNN_FORMULAS = {torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops}


def count_gflops(model: torch.nn.Module, window: torch.Tensor) -> float:
    """GFLOPs of one forward pass of ``window`` (a batch of one), attention on the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
                FlopCounterMode(display=False, custom_mapping=RNN_FORMULAS) as counter:
            model(window)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def inference_ms(model: torch.nn.Module, window: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Median milliseconds of one forward pass of ``window`` in eval mode on its device, after ``warmup`` passes."""
    cuda = window.device.type == "cuda"
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                if cuda:
                    torch.cuda.synchronize(window.device)
                start = time.perf_counter()
                model(window)
                if cuda:
                    torch.cuda.synchronize(window.device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        model.train(was_training)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak from now (a trial process serves several trials)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not allowed: the peak since the process started
        pass


def peak_memory_mb(device: torch.device) -> float:
    """CUDA's peak allocation (GPU) or the process's peak resident memory (CPU) since the last reset, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
