"""Why video is decoded once per dataset: clips/s when every clip is decoded from the mp4 and cropped on the fly (what a
trial would do without the cache) vs read from the memory-mapped clip cache, measured in one run.

    python benchmarks/bench_data_path.py --clips 200
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--stride", type=int, default=2)
    a = ap.parse_args()

    from trainables.data.cache import load_split
    from trainables.data.clips import ClipSpec, TrainWindows
    from trainables.prepare.decode import open_video
    from trainables.prepare.manifest import read_manifest
    from trainables.prepare.registration import Registration, coarse_crop
    from trainables.prepare.run import prepare
    from trainables.prepare.sidecar import read_face_sidecar
    from trainables.prepare.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "ds", frames=250, progress=False)
        reg = Registration(size=64)
        t0 = time.perf_counter()
        index, _ = prepare(manifest, Path(tmp) / "cache", reg, progress=False)
        prepare_s = time.perf_counter() - t0
        spec = ClipSpec(length=32, overlap=0.5, clip_len=24, stride=a.stride)
        windows = TrainWindows(load_split(index, "train"), spec)
        entries = {e.video_id: e for e in read_manifest(manifest)}
        order = np.random.default_rng(0).integers(0, len(windows), a.clips)

        # (a) decode + crop per clip, as a trial without a cache would
        t0 = time.perf_counter()
        readers, tracks = {}, {}
        for i in order:
            v_i, s = windows.items[i]
            vid = windows.videos[v_i].video_id
            if vid not in readers:
                readers[vid] = open_video(entries[vid].path)[0]
                tracks[vid] = read_face_sidecar(entries[vid].faces)
            rng = np.random.default_rng(int(i))
            pos = s + np.flatnonzero(windows.views[v_i].valid[s:s + spec.length])
            idx = pos[spec.sample(len(pos), rng)]
            frames = readers[vid].get_batch([int(k) for k in idx]).asnumpy()
            np.stack([coarse_crop(f, tracks[vid].boxes[k], reg.size, margin=reg.margin) for f, k in zip(frames, idx)])
        decode_s = time.perf_counter() - t0

        # (b) the cache
        t0 = time.perf_counter()
        for i in order:
            windows[int(i)]
        cache_s = time.perf_counter() - t0
    print(f"prepare (decode once, 16 videos x 250 frames): {prepare_s:.2f} s")
    print(f"decode per clip: {a.clips / decode_s:8.1f} clips/s")
    print(f"memory-mapped cache: {a.clips / cache_s:8.1f} clips/s")
    print(f"cache / decode ratio: {decode_s / cache_s:.1f}x")


if __name__ == "__main__":
    main()
