"""`emotune predict` speed on CPU as a real-time factor (video seconds per wall second), split into decoding with faces
(OpenCV detection, box smoothing, cropping; decoding runs in its own thread beside detection, and its busy time is
shown) and the model (windows, views, post-processing), for the demo's promoted model on a 720p clip: skimage's
astronaut photo moving over a 1280x720 canvas.

    python benchmarks/bench_predict.py                        # runs `emotune demo` in a scratch folder first
    python benchmarks/bench_predict.py --demo-root emotune-demo   # an existing demo's promoted model

A real-time factor above 1 means faster than the video plays. Bare decord decoding of the same clip is timed in the
same run, for the share of the time that decoding alone sets.
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clip_720p(path: Path, seconds: float, fps: int = 25) -> Path:
    """The astronaut's head and shoulders, scaled to a 720p interview framing, sliding over a grey canvas."""
    import cv2
    from skimage.data import astronaut

    face = cv2.resize(astronaut()[0:220, 120:300], (360, 440), interpolation=cv2.INTER_CUBIC)
    w, h = 1280, 720
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    n = int(seconds * fps)
    for k in range(n):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x = int(40 + (w - face.shape[1] - 80) * k / max(n - 1, 1))
        canvas[140:140 + face.shape[0], x:x + face.shape[1]] = face
        out.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    out.release()
    return path


def bare_decode(path: Path, chunk: int = 64) -> float:
    """Seconds to decode every frame of ``path`` with decord, in chunks as preparation reads them."""
    from trainables.prepare.decode import open_video

    started = time.perf_counter()
    reader, _, n = open_video(path)
    for s in range(0, n, chunk):
        reader.get_batch(list(range(s, min(n, s + chunk)))).asnumpy()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-root", default=None, help="folder of an `emotune demo` run (default: run one now)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the 720p clip")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="emotune-bench-predict-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the demo, clip and outputs go when the benchmark ends
    root = Path(a.demo_root).resolve() if a.demo_root else work / "emotune-demo"
    if not a.demo_root:
        print("running `emotune demo` for its promoted model ...", flush=True)
        subprocess.run([str(Path(sys.executable).with_name("emotune")), "demo", "--root", str(root)], check=True,
                       stdout=subprocess.DEVNULL)

    from analysis.models import resolve_model
    from trainables.storage import default_tracking_uri
    from trainables.predict import Predictor

    bundle = resolve_model("models:/emotune@production", default_tracking_uri(root))
    video = clip_720p(work / "interview_720p.mp4", a.seconds)
    predictor = Predictor(bundle, detector="opencv", progress=False)
    predictor.predict_video(video)  # once to load the detector and warm up the model
    started = time.perf_counter()
    table = predictor.predict_video(video)
    wall = time.perf_counter() - started
    decode_only = bare_decode(video)

    t = predictor.timings
    print(f"\n720p clip: {a.seconds:g} s at 25 fps ({int(a.seconds * 25)} frames), {len(table)} label steps, "
          f"face on {100 * table['face'].mean():.1f}%; model {bundle.config.get('backbone')} from {root}; "
          f"{a.threads} thread(s)")
    print(f"{'stage':<34}{'seconds':>9}{'real-time factor':>18}{'share':>8}")
    for name, seconds in (("decode + faces (overlapped)", t["frames"]),
                          ("  of which the decode thread busy", t["decode"]),
                          ("model: windows, views", t["model"]), ("total", wall)):
        print(f"{name:<34}{seconds:>9.2f}{a.seconds / max(seconds, 1e-9):>17.2f}x{100 * seconds / wall:>7.0f}%")
    print(f"{'bare decord decode':<34}{decode_only:>9.2f}{a.seconds / decode_only:>17.2f}x")


if __name__ == "__main__":
    main()
