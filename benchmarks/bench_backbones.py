"""Training-speed benchmark of the backbone families on CPU: forward + backward clips/s, tiny and paper-sized.

Run ``python benchmarks/bench_backbones.py`` (``--budget`` seconds per measurement, ``--sizes tiny`` or ``paper``).
Every measurement builds the backbone through the registry, runs one warm-up step, then times forward + backward steps
(batch 2, loss on every output) until the time budget is spent (at least 2); clips/s come from the fastest step. Ratios are to ``cnn_rnn`` measured in the same run
and block, so they stay meaningful on a loaded machine where absolute clips/s do not.

Paper-sized settings: cnn_rnn — VGG-16 per frame + LSTM 1024 at 100x80, T=16 (paper 003), and a ResNet-18 per-frame
variant; i3d — ResNet-50 inflated, 112x112, T=16 (paper 003); conv3d_resnet_gru — 96x96 grayscale, T=32 (paper 001).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.models import create_backbone  # noqa: E402


@dataclass
class Case:
    """One measurement: a registered backbone, its kwargs and the clip shape (T, C, H, W)."""

    label: str
    family: str
    backbone: str
    clip: tuple[int, int, int, int]
    kwargs: dict = field(default_factory=dict)


TINY_CLIP = (16, 3, 64, 64)
CASES: dict[str, list[Case]] = {
    "tiny": [
        Case("cnn_rnn_tiny", "cnn_rnn", "cnn_rnn_tiny", TINY_CLIP),
        Case("i3d_tiny", "i3d", "i3d_tiny", TINY_CLIP),
        Case("conv3d_resnet_gru_tiny", "conv3d_resnet_gru", "conv3d_resnet_gru_tiny", (16, 1, 64, 64)),
    ],
    "paper": [
        Case("cnn_rnn vgg16+lstm1024", "cnn_rnn", "cnn_rnn", (16, 3, 100, 80),
             dict(cnn="vgg16", rnn="lstm", hidden=1024)),
        Case("cnn_rnn resnet18+gru", "cnn_rnn", "cnn_rnn", (16, 3, 100, 80), dict(cnn="resnet18")),
        Case("i3d resnet50", "i3d", "i3d", (16, 3, 112, 112), dict(cnn="resnet50")),
        Case("conv3d_resnet_gru", "conv3d_resnet_gru", "conv3d_resnet_gru", (32, 1, 96, 96)),
    ],
}


@dataclass
class Result:
    case: Case
    params_m: float
    step_seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.step_seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def clips_per_s(self) -> float:
        # From the fastest step: on a shared machine other processes only ever slow a step down, so the minimum is the
        # least contaminated estimate (the timeit convention); the median is printed beside it.
        return BATCH / self.best


BATCH = 2


def measure(case: Case, budget: float, min_steps: int = 2, max_steps: int = 50) -> Result:
    """Time forward + backward steps of ``case`` (after one warm-up step) until ``budget`` seconds are spent and at
    least ``min_steps`` steps ran."""
    torch.manual_seed(0)
    model = create_backbone(case.backbone, **case.kwargs).train()
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(BATCH, *case.clip)

    def step() -> None:
        for p in params:
            p.grad = None
        out = model(x)
        sum(v.float().pow(2).mean() for v in out.values()).backward()

    step()  # warm-up: allocator, oneDNN primitive caches
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_steps and time.perf_counter() - start >= budget:
            break
    return Result(case, sum(p.numel() for p in model.parameters()) / 1e6, times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement after warm-up")
    parser.add_argument("--sizes", nargs="+", choices=sorted(CASES), default=["tiny", "paper"])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, budget {args.budget:.1f}s")
    header = f"{'size':6} {'backbone':26} {'clip (T,C,H,W)':18} {'params M':>9} {'steps':>5} {'best s':>7} " \
             f"{'median s':>8} {'clips/s':>8} {'vs cnn_rnn':>10}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        baseline: float | None = None
        for case in CASES[size]:
            try:
                result = measure(case, args.budget)
            except Exception as exc:  # one broken family must not hide the others' numbers
                print(f"{size:6} {case.label:26} {str(case.clip):18} FAILED {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
                continue
            # The first cnn_rnn row that runs is the reference of its block.
            if case.family == "cnn_rnn" and baseline is None:
                baseline = result.clips_per_s
            ratio = f"{result.clips_per_s / baseline:.2f}x" if baseline else "-"
            print(f"{size:6} {case.label:26} {str(case.clip):18} {result.params_m:9.2f} {len(result.step_seconds):5d} "
                  f"{result.best:7.3f} {result.median:8.3f} {result.clips_per_s:8.2f} {ratio:>10}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
