"""SSTS training time of the VideoMAE ViT-S (paper 000) per stride, and parameters / FLOPs of the transformer and
MIMAMO backbones (papers 000, 002, 004), measured in one run.

    python benchmarks/bench_ssts_vit.py                 # defaults: 16 clips x 24 frames, 96x96, batch 4, 1 thread
    python benchmarks/bench_ssts_vit.py --img 64 --repeats 3 --threads 2
    python benchmarks/bench_ssts_vit.py --quick         # smoke run (32x32, 4 clips, no 224x224 FLOP rows)

Part 1 trains ``video_vit`` ViT-S/16 (embed 384, depth 12, 6 heads, tubelet 2) for one epoch per SSTS stride s in
{1, 2, 3, 4, 6, 8, 12}: the same random clips and targets, the same seed (model init, optimizer and sampler) for every
stride; each clip's frames come from the platform's SSTS sampler (``trainables.data.sampling.ssts_indices``), so a clip
has 24/s frames (s = 8: 3 frames, which the model pads to 4 for its 2-frame tubelet). MSE to random targets, AdamW
(lr 5e-4, weight decay 0.05 as paper 000). Each stride gets one untimed warm-up step, then ``--repeats`` timed epochs
(median printed); ratios are to s = 1 from the same run. The optimizer's share of the epoch (AdamW over all 22M
parameters costs the same at every stride) is timed too, and the speed-up without it printed. Beside the times:
forward GFLOPs per clip at the benchmark resolution and at 224x224 (the paper's), what compute alone would give.

Part 2 prints parameters and forward FLOPs per clip (batch 1) of video_vit-S, tpsbt (small), tpsbt_base and mimamo
(ResNet-50), and TPSBT's FLOPs over a plain video ViT with the same width, heads and total depth at the same input
(paper 002: ~43% fewer FLOPs). FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add
as 2 FLOPs and only matrix products and convolutions (not norms, activations, softmax or FFTs). On CPU the fused SDPA
kernel is not in its formula table, so attention is counted under the math SDPA backend (same products, now visible).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data.sampling import ssts_indices  # noqa: E402
from trainables.models import create_backbone  # noqa: E402

STRIDES = (1, 2, 3, 4, 6, 8, 12)
CLIP_LEN = 24  # SSTS draw (paper 000)
VIT_S = dict(embed_dim=384, depth=12, num_heads=6, patch_size=16)
PAPER_S1_MIN, PAPER_S6_MIN = 94.6, 16.0  # paper 000, training minutes at s = 1 and s = 6
GOAL = 6.0  # the goal for the s = 6 speed-up
PAPER_TPSBT_REDUCTION = 43.0  # paper 002, % fewer fine-tuning FLOPs than a plain ViT


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs of ``model`` on one random input of ``shape`` (2 per multiply-add, matmuls and convs only)."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.randn(shape))
    return counter.get_total_flops()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vit_tokens(frames: int, img: int, patch: int = 16, tubelet: int = 2) -> int:
    return math.ceil(frames / tubelet) * (img // patch) ** 2


def train_epochs(stride: int, clips: torch.Tensor, targets: torch.Tensor,
                 a: argparse.Namespace) -> tuple[int, list, list]:
    """Build ViT-S from the seed, one warm-up step, then ``a.repeats`` timed epochs over ``clips`` with SSTS stride
    ``stride``. Returns (frames per clip, epoch seconds, seconds of those spent in ``opt.step``)."""
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    n_clips, n_frames = clips.shape[:2]
    out_frames = len(range(0, CLIP_LEN, stride))
    model = create_backbone("video_vit", **VIT_S, img_size=a.img, num_frames=out_frames, out_dims=targets.shape[1])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)

    optim_seconds = 0.0

    def step(batch: range) -> int:
        nonlocal optim_seconds
        # One SSTS draw per clip, as the training loader does; every index array has 24/s frames here.
        picks = [ssts_indices(n_frames, stride, rng, clip_len=CLIP_LEN) for _ in batch]
        x = torch.stack([clips[i, torch.from_numpy(idx)] for i, idx in zip(batch, picks)])
        loss = torch.nn.functional.mse_loss(model(x)["window"], targets[batch.start:batch.stop])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        optim_seconds += time.perf_counter() - t0
        return x.shape[1]

    frames = step(range(0, min(a.batch, n_clips)))  # warm-up: allocator, oneDNN primitives, optimizer state
    if frames != out_frames:
        raise RuntimeError(f"SSTS gave {frames} frames at stride {stride}, expected {out_frames}")
    seconds, optim = [], []
    for _ in range(a.repeats):
        optim_seconds = 0.0
        t0 = time.perf_counter()
        for start in range(0, n_clips, a.batch):
            step(range(start, min(start + a.batch, n_clips)))
        seconds.append(time.perf_counter() - t0)
        optim.append(optim_seconds)
    return frames, seconds, optim


def part_ssts(a: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(a.seed)
    clips = torch.randn(a.clips, a.frames, 3, a.img, a.img, generator=g)
    targets = torch.rand(a.clips, 2, generator=g) * 2 - 1
    print(f"== 1. SSTS training time: video_vit ViT-S/16 (embed 384, depth 12, 6 heads, tubelet 2), {a.clips} clips x "
          f"{a.frames} frames, {a.img}x{a.img}, batch {a.batch}, AdamW, MSE, seed {a.seed}, {torch.get_num_threads()} "
          f"thread(s); median of {a.repeats} epoch(s) after 1 warm-up step")
    flop_sizes = [a.img] + ([224] if not a.quick and a.img != 224 else [])
    flop_models = {img: create_backbone("video_vit", **VIT_S, img_size=img) for img in flop_sizes}
    cols = "".join(f" {'GFLOPs@' + str(img):>11} {'ratio':>6}" for img in flop_sizes)
    header = (f"{'s':>3} {'frames':>6} {'tokens':>6} {'s/epoch':>8} {'epochs':>16} {'speed-up':>8} {'optim s':>7} "
              f"{'w/o optim':>9}{cols}")
    print(header)
    print("-" * len(header))
    base_time, base_rest, base_flops, speedups, rest_speedups = None, None, {}, {}, {}
    for s in STRIDES:
        frames, seconds, optim = train_epochs(s, clips, targets, a)
        med, opt_med = statistics.median(seconds), statistics.median(optim)
        rest = statistics.median(t - o for t, o in zip(seconds, optim))
        base_time, base_rest = base_time or med, base_rest or rest
        speedups[s], rest_speedups[s] = base_time / med, base_rest / rest
        row = (f"{s:3d} {frames:6d} {vit_tokens(frames, a.img):6d} {med:8.2f} "
               f"{' '.join(f'{t:.2f}' for t in seconds):>16} {speedups[s]:7.2f}x {opt_med:7.2f} "
               f"{rest_speedups[s]:8.2f}x")
        for img, model in flop_models.items():
            fl = forward_flops(model, (1, frames, 3, img, img))
            base_flops.setdefault(img, fl)
            row += f" {fl / 1e9:11.2f} {base_flops[img] / fl:5.2f}x"
        print(row, flush=True)
    measured = speedups[6]
    paper = PAPER_S1_MIN / PAPER_S6_MIN
    print(f"s=6 vs s=1: measured {measured:.2f}x | paper 000 {PAPER_S1_MIN} -> {PAPER_S6_MIN} min = {paper:.1f}x | "
          f"goal >= {GOAL:.0f}x: {'MET' if measured >= GOAL else 'NOT MET'}")
    print(f"  s=6 without the optimizer step: {rest_speedups[6]:.2f}x; forward-FLOP ratio s=1 / s=6: "
          + ", ".join(f"{base_flops[img] / forward_flops(m, (1, 4, 3, img, img)):.2f}x at {img}x{img}"
                      for img, m in flop_models.items()))


def part_flops(a: argparse.Namespace) -> None:
    print()
    print("== 2. Parameters and forward FLOPs per clip (batch 1; FlopCounterMode: 1 multiply-add = 2 FLOPs; matmuls, "
          "convolutions and attention products only)")
    vit_imgs = [224, a.img] if not a.quick else [a.img]
    cases = [(f"video_vit ViT-S/16 @ {img}", "video_vit", dict(VIT_S, img_size=img), (1, 16, 3, img, img))
             for img in vit_imgs]
    cases += [
        ("tpsbt (small, 384, 8-4-2)", "tpsbt", {}, (1, 16, 3, 160, 160)),
        ("tpsbt_base (512, 12-6-3)", "tpsbt_base", {}, (1, 16, 3, 160, 160)),
        ("ViT same as tpsbt (384, d14, 6h)", "video_vit", dict(embed_dim=384, depth=14, num_heads=6, img_size=160),
         (1, 16, 3, 160, 160)),
        ("ViT same as base (512, d21, 8h)", "video_vit", dict(embed_dim=512, depth=21, num_heads=8, img_size=160),
         (1, 16, 3, 160, 160)),
        ("mimamo ResNet-50, phase full", "mimamo", {}, (1, 16, 3, 112, 112)),
        ("mimamo ResNet-50, phase 48", "mimamo", dict(phase_size=48), (1, 16, 3, 112, 112)),
    ]
    header = f"{'model':34} {'input (B,T,C,H,W)':20} {'params M':>9} {'GFLOPs':>9}"
    print(header)
    print("-" * len(header))
    flops = {}
    for label, name, kwargs, shape in cases:
        torch.manual_seed(0)
        model = create_backbone(name, **kwargs)
        flops[label] = forward_flops(model, shape)
        print(f"{label:34} {str(shape):20} {n_params(model) / 1e6:9.2f} {flops[label] / 1e9:9.2f}", flush=True)
        del model
    pairs = (("tpsbt (small, 384, 8-4-2)", "ViT same as tpsbt (384, d14, 6h)", "TPSBT-S / ViT(depth 14, 384)"),
             ("tpsbt_base (512, 12-6-3)", "ViT same as base (512, d21, 8h)", "TPSBT-base / ViT(depth 21, 512)"))
    for tp, vit, name in pairs:
        r = flops[tp] / flops[vit]
        print(f"{name} = {r:.3f}  ({(1 - r) * 100:.1f}% fewer FLOPs; paper 002: ~{PAPER_TPSBT_REDUCTION:.0f}% fewer), "
              f"16 frames 160x160")
    print("mimamo: the steerable pyramid's FFTs are not counted (FlopCounterMode has no FFT formula); "
          "'phase full' is the registry default (pyramid at 112x112), 'phase 48' the authors' 48x48 phase crops.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img", type=int, default=96, help="frame side for the training benchmark (multiple of 16)")
    ap.add_argument("--clips", type=int, default=16, help="random clips in the training set")
    ap.add_argument("--frames", type=int, default=24, help="frames per clip (>= 24, the SSTS draw)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="timed epochs per stride (median printed)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-flops", action="store_true", help="only part 1")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32x32, 4 clips, batch 2, fewer FLOP rows")
    a = ap.parse_args(argv)
    if a.quick:
        a.img, a.clips, a.batch = 32, 4, 2
    if a.img % 16 or a.frames < CLIP_LEN:
        ap.error(f"--img must be a multiple of 16 and --frames >= {CLIP_LEN}")
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    t0 = time.perf_counter()
    part_ssts(a)
    if not a.skip_flops:
        part_flops(a)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
