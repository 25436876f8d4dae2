"""`emotune data prepare --detector opencv` speed on a 720p clip (skimage's astronaut moving over a 1280x720 canvas, the
clip of bench_predict.py), before and after fast face preparation, measured in one run:

    python benchmarks/bench_prepare.py --seconds 12

Prints frames/s of bare decord decoding; of `data prepare` with full-resolution detection on every frame (the behaviour
before: `--detect-width 0 --detect-every 1`), with reduced frames only (`--detect-every 1`), and with the defaults
(`--detect-width 480 --detect-every 4`); the ratio of the defaults to full detection (goal >= 4x); and how well the
defaults' boxes agree with full detection on every frame (IoU mean and min, share of frames with IoU >= 0.8) and both
face shares. Each setting prepares into a fresh cache, in this process (no start-up costs). Besides wall time, the CPU
time of the process (every thread) per frame is printed: on a shared machine it varies less than wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import bare_decode, clip_720p  # noqa: E402


def _dataset(root: Path, seconds: float, fps: int = 25) -> Path:
    video = clip_720p(root / "interview_720p.mp4", seconds, fps)
    n = int(seconds * fps)
    (root / "labels.csv").write_text("frame,valence,arousal\n" + "".join(f"{t},0.1,-0.1\n" for t in range(n)))
    (root / "manifest.csv").write_text(f"video_id,path,subject,split,labels\ninterview,{video.name},s0,train,"
                                       f"labels.csv\n")
    return root / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the 720p clip at 25 fps")
    a = ap.parse_args()

    from cluster.cli import main as emotune
    from trainables.prepare import faces
    from trainables.prepare.faces import box_iou

    tracks: list = []

    class Recorded(faces.SparseFaceTrack):  # keeps each run's boxes for the agreement figures
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tracks.append(self)

    faces.SparseFaceTrack = Recorded  # build.py looks it up here at each video
    work = Path(tempfile.mkdtemp(prefix="emotune-bench-prepare-"))
    manifest = _dataset(work, a.seconds)
    n = int(a.seconds * 25)
    faces.create_detector("opencv")  # load the cascade once before timing (as prepare's first video does)

    decode_cpu = time.process_time()
    decode = bare_decode(manifest.parent / "interview_720p.mp4")
    decode_cpu = time.process_time() - decode_cpu
    runs = {}
    for name, width, every in (("before: full resolution, every frame", 0, 1),
                               ("reduced frames only (480 px)", 480, 1),
                               ("after: defaults (480 px, every 4th)", 480, 4)):
        argv = ["data", "prepare", "--manifest", str(manifest), "--cache", str(work / f"cache-{width}-{every}"),
                "--detector", "opencv", "--detect-width", str(width), "--detect-every", str(every)]
        out = io.StringIO()
        started, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):  # summary, progress bar
            assert emotune(argv) == 0, out.getvalue()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        track = tracks[-1]
        valid = (track.scores >= 0.8) & np.isfinite(track.boxes).all(axis=1)
        runs[name] = (seconds, track.boxes.copy(), valid, float(track.detected.mean()), cpu)

    names = list(runs)
    before, after = runs[names[0]], runs[names[-1]]
    print(f"\n720p clip: {a.seconds:g} s at 25 fps ({n} frames), face about 190 px wide; 2 cores, shared machine")
    print(f"{'':<50}{'seconds':>9}{'frames/s':>10}{'CPU ms/frame':>14}{'detector ran on':>17}")
    print(f"{'bare decord decode':<50}{decode:>9.2f}{n / decode:>10.1f}{1000 * decode_cpu / n:>14.1f}")
    for name in names:
        seconds, _, _, detected, cpu = runs[name]
        print(f"{'prepare, ' + name:<50}{seconds:>9.2f}{n / seconds:>10.1f}{1000 * cpu / n:>14.1f}"
              f"{100 * detected:>16.0f}%")
    print(f"after / before: {before[0] / after[0]:.1f}x faster in wall time (goal >= 4x), {before[4] / after[4]:.1f}x "
          f"less CPU time (all threads; steadier than wall time on a busy machine)")
    print(f"after reaches {100 * decode / after[0]:.0f}% of bare decoding's speed and spends "
          f"{100 * decode_cpu / after[4]:.0f}% of its CPU time decoding")
    for name in names[1:]:
        ious = np.array([box_iou(x, y) for x, y in zip(runs[name][1], before[1])])
        both = runs[name][2] & before[2]
        share = 100 * (ious[both] >= 0.8).mean()
        print(f"boxes of '{name}' vs full detection, {both.sum()} frames with a face in both: IoU mean "
              f"{ious[both].mean():.3f}, min {ious[both].min():.3f}, share >= 0.8: {share:.1f}%")
    print(f"face share: before {100 * before[2].mean():.1f}%, after {100 * after[2].mean():.1f}%")


if __name__ == "__main__":
    main()
