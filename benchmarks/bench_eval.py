"""Evaluation with shared frame features: a CNN-RNN's validation pass encodes each frame once and reuses its features in
every overlapping window and SSTS view, instead of running the CNN on every clip. Prints the time per validation pass
both ways and the ratio, measured in one run, for the tiny CNN-RNN and the paper-size one (ResNet-18 + GRU).

    python benchmarks/bench_eval.py --frames 400 --overlap 0.75 --stride 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


class WholeClips(torch.nn.Module):
    """The same network through ``forward`` only, so evaluation runs it clip by clip."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=400, help="frames per synthetic video")
    ap.add_argument("--size", type=int, default=64, help="face crop size")
    ap.add_argument("--overlap", type=float, default=0.75)
    ap.add_argument("--stride", type=int, default=2, help="SSTS stride (views per window)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from trainables.data.cache import load_split
    from trainables.data.clips import ClipSpec, predict_labels
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize
    from trainables.models import create_backbone

    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "ds", frames=a.frames, progress=False)
        index, _ = prepare(manifest, Path(tmp) / "cache", Registration(size=a.size), progress=False)
        videos = load_split(index, "val")
        spec = ClipSpec(length=32, overlap=a.overlap, clip_len=24, stride=a.stride)
        print(f"validation: {len(videos)} videos x {a.frames} frames, {a.size}px crops, window 32, overlap "
              f"{a.overlap}, clip 24, SSTS stride {a.stride}, {a.threads} thread(s)")
        for name, kwargs in (("cnn_rnn_tiny", {}), ("cnn_rnn resnet18+gru", {"cnn": "resnet18", "rnn": "gru"})):
            torch.manual_seed(0)
            model = create_backbone(name.split()[0], out_dims=2, **kwargs).eval()
            timings = {}
            for label, net in (("clip by clip", WholeClips(model)), ("shared frames", model)):
                t0 = time.perf_counter()
                preds = [predict_labels(net, v, spec, torch.device("cpu")) for v in videos]
                timings[label] = (time.perf_counter() - t0, preds)
            (slow, p_slow), (fast, p_fast) = timings["clip by clip"], timings["shared frames"]
            diff = max(float(abs(x - y).max()) for x, y in zip(p_slow, p_fast))
            print(f"{name:22s} clip by clip {slow:6.2f}s  shared frames {fast:6.2f}s  = {slow / fast:4.1f}x faster "
                  f"(max prediction difference {diff:.1e})")


if __name__ == "__main__":
    main()
