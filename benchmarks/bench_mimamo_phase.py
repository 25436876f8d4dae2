"""Cost of MIMAMO's symmetric extension (paper 004): the phase inputs and the whole forward pass with the frames
mirror-extended to 2H x 2W before the steerable pyramid (the authors' procedure, the default) and without it
(``pyramid_extension=False``), measured in one run.

    python benchmarks/bench_mimamo_phase.py                # 1 thread, median of 15 (5 for ResNet-50) timed calls
    python benchmarks/bench_mimamo_phase.py --threads 2 --repeats 30

Two sizes: ``mimamo_tiny`` on 2 clips x 8 frames of 48x48 (the authors' phase size; the tests' scale) and ``mimamo``
(ResNet-50) on 1 clip x 8 frames of 112x112 resized to 48x48 phase frames. Times are CPU time of the process
(``time.process_time``) under ``torch.no_grad``, so other load on the machine inflates them less than wall time would;
each setting gets one untimed call first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.models import create_backbone  # noqa: E402


def _cpu_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per measurement (a third for ResNet-50)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("mimamo_tiny", {}, (2, 8, 3, 48, 48), args.repeats),
             ("mimamo", {"phase_size": 48}, (1, 8, 3, 112, 112), max(1, args.repeats // 3))]
    print(f"{'backbone':12s} {'input':20s} {'extension':>9s} {'phase_inputs ms':>16s} {'forward ms':>11s}")
    for name, kwargs, shape, repeats in cases:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        rows = {}
        for extension in (True, False):
            torch.manual_seed(0)
            model = create_backbone(name, pyramid_extension=extension, **kwargs).eval()
            with torch.no_grad():
                rows[extension] = (_cpu_ms(lambda: model.phase_inputs(x), repeats), _cpu_ms(lambda: model(x), repeats))
            print(f"{name:12s} {str(shape):20s} {str(extension):>9s} {rows[extension][0]:16.2f} "
                  f"{rows[extension][1]:11.2f}")
        print(f"{name:12s} extension / none: phase_inputs x{rows[True][0] / rows[False][0]:.2f}, "
              f"forward x{rows[True][1] / rows[False][1]:.2f}")


if __name__ == "__main__":
    main()
