"""`emotune data prepare --detector opencv` speed on a 720p clip (skimage's astronaut moving over a 1280x720 canvas, the
clip of bench_predict.py), before and after fast face preparation, measured in one run:

    python benchmarks/bench_prepare.py --seconds 12

Prints frames/s of bare decord decoding; of `data prepare` with full-resolution detection on every frame (the behaviour
before: `--detect-width 0 --detect-every 1`), with reduced frames only (`--detect-every 1`), and with the defaults
(`--detect-width 480 --detect-every 4`); the ratio of the defaults to full detection (goal >= 4x); and how well the
defaults' boxes agree with full detection on every frame (IoU mean and min, share of frames with IoU >= 0.8) and both
face shares. Each setting prepares into a fresh cache, in this process (no start-up costs). Besides wall time, the CPU
time of the process (every thread) per frame is printed: on a shared machine it varies less than wall time.

On real clips, as a user meets them:

    python benchmarks/bench_prepare.py --videos Megamind.avi Megamind_bugy.avi --copies 6

makes ``--copies`` distinct files from the given clips (cycled; a few bytes appended after the last chunk, which
decoders skip, so every file has its own digest and cache key while decoding exactly as the original), then times bare
decoding, full detection and the defaults both in this process (with the boxes, for IoU) and as whole commands
(``emotune data prepare --workers 1`` in a subprocess: start-up, hashing, index and summary included; CPU time is the
child's user + system time). The load average of the machine is printed before and after.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import shutil
import os
import resource
import subprocess
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


def _real_dataset(root: Path, videos: list[Path], copies: int) -> tuple[Path, list[Path], int]:
    """``copies`` distinct files cycled from ``videos`` (trailing bytes after the last chunk tell them apart), with
    labels and a manifest; returns (manifest, files, total frames)."""
    from trainables.prepare.decode import open_video

    rows, files, total = [], [], 0
    for k in range(copies):
        src = videos[k % len(videos)]
        dst = root / f"clip{k}{src.suffix}"
        tag = f"copy{k:04d}".encode()
        dst.write_bytes(src.read_bytes() + b"JUNK" + len(tag).to_bytes(4, "little") + tag)
        _, _, n = open_video(dst)
        total += n
        (root / f"labels{k}.csv").write_text("frame,valence,arousal\n" + "".join(f"{t},0.1,-0.1\n" for t in range(n)))
        rows.append(f"v{k},{dst.name},s{k},train,labels{k}.csv\n")
        files.append(dst)
    (root / "manifest.csv").write_text("video_id,path,subject,split,labels\n" + "".join(rows))
    return root / "manifest.csv", files, total


def _whole_command(argv: list[str]) -> tuple[float, float, dict]:
    """Run ``emotune <argv>`` in a subprocess: (wall seconds, the child's CPU seconds, the index's face shares)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = Path(sys.executable).with_name("emotune")  # the installed command, as users start it
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "cluster.cli"]
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"emotune {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    import json

    index = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("dataset index: "))
    shares = json.loads(Path(index).read_text())["face_share"]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), shares


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the 720p clip at 25 fps")
    ap.add_argument("--videos", nargs="+", type=Path, default=None,
                    help="real clips to prepare instead of the synthetic 720p clip")
    ap.add_argument("--copies", type=int, default=6, help="distinct files made from --videos (cycled)")
    a = ap.parse_args()
    if a.videos:
        return main_real(a.videos, a.copies)

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
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the clips and caches go when the benchmark ends
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


SETTINGS = (("full detection (width 0, every 1)", 0, 1),
            ("defaults", None, None))


def main_real(videos: list[Path], copies: int) -> None:
    """Bare decoding, full detection and the defaults on real clips: in this process and as whole commands."""
    from cluster.cli import main as emotune
    from trainables.prepare import faces
    from trainables.prepare.faces import box_iou

    tracks: list = []

    class Recorded(faces.SparseFaceTrack):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tracks.append(self)

    faces.SparseFaceTrack = Recorded
    work = Path(tempfile.mkdtemp(prefix="emotune-bench-prepare-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the clips and caches go when the benchmark ends
    manifest, files, n = _real_dataset(work, [v.resolve() for v in videos], copies)
    load_before = _load()
    decode_cpu = time.process_time()
    decode = sum(bare_decode(f) for f in files)
    decode_cpu = time.process_time() - decode_cpu
    faces.create_detector("opencv")

    def argv(name: str, width, every) -> list[str]:
        extra = [] if width is None else ["--detect-width", str(width), "--detect-every", str(every)]
        return ["data", "prepare", "--manifest", str(manifest), "--cache", str(work / f"cache-{name}"), "--detector",
                "opencv", "--workers", "1", *extra]

    inproc, whole = {}, {}
    for name, width, every in SETTINGS:
        del tracks[:]
        started, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert emotune(argv(f"in-{width}", width, every)) == 0
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        boxes = np.concatenate([t.boxes for t in tracks])
        valid = np.concatenate([(t.scores >= 0.8) & np.isfinite(t.boxes).all(axis=1) for t in tracks])
        detected = float(np.concatenate([t.detected for t in tracks]).mean())
        inproc[name] = (seconds, cpu, boxes, valid, detected)
        whole[name] = _whole_command(argv(f"cmd-{width}", width, every))
    load_after = _load()

    full, dflt = (n for n, _, _ in SETTINGS)
    print(f"\n{copies} clips from {', '.join(v.name for v in videos)}: {n} frames; load average (1, 5, 15 min) "
          f"{load_before} before, {load_after} after, on {os.cpu_count()} cores")
    print(f"{'':<58}{'seconds':>9}{'frames/s':>10}{'CPU ms/frame':>14}{'detector ran on':>17}")
    print(f"{'bare decord decode':<58}{decode:>9.2f}{n / decode:>10.1f}{1000 * decode_cpu / n:>14.1f}")
    for name, _, _ in SETTINGS:
        seconds, cpu, _, _, detected = inproc[name]
        print(f"{'in process, ' + name:<58}{seconds:>9.2f}{n / seconds:>10.1f}{1000 * cpu / n:>14.1f}"
              f"{100 * detected:>16.0f}%")
    for name, _, _ in SETTINGS:
        seconds, cpu, _ = whole[name]
        print(f"{'whole command, ' + name:<58}{seconds:>9.2f}{n / seconds:>10.1f}{1000 * cpu / n:>14.1f}")
    for label, runs, cpu_at in (("in process", inproc, 1), ("whole command", whole, 1)):
        print(f"{label}: defaults / full detection: {runs[full][0] / runs[dflt][0]:.1f}x in wall time, "
              f"{runs[full][cpu_at] / runs[dflt][cpu_at]:.1f}x in CPU time (goal >= 6x)")
    ious = np.array([box_iou(x, y) for x, y in zip(inproc[dflt][2], inproc[full][2])])
    both = inproc[dflt][3] & inproc[full][3]
    print(f"boxes of the defaults vs full detection, {both.sum()} frames with a face in both: IoU mean "
          f"{ious[both].mean():.3f}, min {ious[both].min():.3f}, share >= 0.8: {100 * (ious[both] >= 0.8).mean():.1f}%")
    print(f"face share, in process: full detection {100 * inproc[full][3].mean():.1f}%, defaults "
          f"{100 * inproc[dflt][3].mean():.1f}%; whole command (mean over videos): full "
          f"{100 * np.mean(list(whole[full][2].values())):.1f}%, defaults {100 * np.mean(list(whole[dflt][2].values())):.1f}%")


if __name__ == "__main__":
    main()
