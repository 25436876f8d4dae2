"""Resource sizing: how many trials may run at once without any of them waiting forever for its workers."""
from __future__ import annotations

import math

from trainables.errors import ResourceError


def max_concurrent_trials(cluster: dict[str, float], workers: int, cpus_per_worker: float, gpus_per_worker: float,
                          requested: int | None = None, autoscaling: bool = False) -> int:
    """Trials that fit at once: each trial's workers must all be placeable while the other running trials hold theirs.

    A trial takes exactly its workers' CPUs and GPUs: an inline trial's process is its one worker, a Ray Train trial's
    process reserves no CPU (see ``trainables.trial``). So the limit is CPUs (and GPUs) divided by what one trial's
    workers take. ``requested`` lowers it further. On an autoscaling cluster the current size is
    no limit, so only ``requested`` (or 1 per current fit, at least 1) applies.

    Raises:
        ResourceError: one trial needs more CPUs or GPUs than the cluster has (and it cannot grow).
    """
    if workers < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ResourceError(f"workers must be >= 1 and cpus_per_worker > 0 (got workers={workers}, "
                            f"cpus_per_worker={cpus_per_worker}, gpus_per_worker={gpus_per_worker})")
    need_cpu, need_gpu = workers * cpus_per_worker, workers * gpus_per_worker
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    fits = math.floor(have_cpu / need_cpu + 1e-9)
    if need_gpu:
        fits = min(fits, math.floor(have_gpu / need_gpu + 1e-9))
    if fits < 1 and not autoscaling:
        raise ResourceError(f"one trial needs {need_cpu:g} CPU and {need_gpu:g} GPU ({workers} worker(s)), but the "
                            f"cluster has {have_cpu:g} CPU and {have_gpu:g} GPU; lower --workers, --cpus-per-worker or "
                            "--gpus-per-worker")
    limit = max(fits, 1)
    if requested is not None:
        limit = requested if autoscaling else min(limit, requested)
    return max(1, limit)
