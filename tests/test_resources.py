"""Tests for cluster.resources.max_concurrent_trials."""

from __future__ import annotations

import pytest

from cluster.resources import ResourceError, max_concurrent_trials


@pytest.mark.parametrize(
    ("cluster", "workers", "cpus", "gpus", "kwargs", "expected"),
    [
        ({"CPU": 2}, 1, 1, 0, {}, 2),
        ({"CPU": 2}, 1, 1, 0, {"requested": 1}, 1),
        ({"CPU": 2}, 1, 1, 0, {"requested": 5}, 2),  # requested only lowers the limit
        ({"CPU": 2}, 1, 2, 0, {}, 1),
        ({"CPU": 8, "GPU": 2}, 1, 2, 1, {}, 2),  # GPUs bind before CPUs (8 / 2 = 4)
        ({"CPU": 8, "GPU": 4}, 2, 1, 1, {}, 2),  # two workers per trial, each with a GPU
        ({"CPU": 8, "GPU": 2}, 1, 1, 0, {}, 8),  # GPUs are ignored when trials take none
        ({"CPU": 7}, 2, 1, 0, {}, 3),  # floor, never round up
        ({"CPU": 3}, 1, 1.5, 0, {}, 2),  # fractional CPUs per worker
        ({"CPU": 0.3}, 1, 0.1, 0, {}, 3),  # 0.3 / 0.1 is 2.999...96 in floating point
        ({"CPU": 2}, 1, 1, 0, {"autoscaling": True, "requested": 10}, 10),
        ({"CPU": 2}, 1, 1, 0, {"autoscaling": True}, 2),
        ({}, 1, 1, 0, {"autoscaling": True}, 1),  # empty autoscaling cluster: start with one
        ({"CPU": 2}, 2, 2, 0, {"autoscaling": True, "requested": 3}, 3),  # too big now, but the cluster grows
    ],
)
def test_max_concurrent_trials(cluster: dict, workers: int, cpus: float, gpus: float, kwargs: dict,
                               expected: int) -> None:
    assert max_concurrent_trials(cluster, workers, cpus, gpus, **kwargs) == expected


@pytest.mark.parametrize(
    ("cluster", "workers", "cpus", "gpus", "fragments"),
    [
        ({"CPU": 2}, 2, 2, 0, ["needs 4 CPU and 0 GPU", "2 worker(s)", "cluster has 2 CPU and 0 GPU"]),
        ({"CPU": 8}, 1, 1, 1, ["needs 1 CPU and 1 GPU", "cluster has 8 CPU and 0 GPU"]),
        ({"CPU": 8, "GPU": 1}, 2, 1, 1, ["needs 2 CPU and 2 GPU", "cluster has 8 CPU and 1 GPU"]),
        ({}, 1, 1, 0, ["needs 1 CPU", "cluster has 0 CPU"]),
    ],
)
def test_trial_larger_than_cluster_raises(cluster: dict, workers: int, cpus: float, gpus: float,
                                          fragments: list[str]) -> None:
    with pytest.raises(ResourceError) as info:
        max_concurrent_trials(cluster, workers, cpus, gpus, requested=1)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("workers", "cpus", "gpus", "fragment"),
    [
        (0, 1, 0, "workers=0"),
        (-1, 1, 0, "workers=-1"),
        (1, 0, 0, "cpus_per_worker=0"),
        (1, -1, 0, "cpus_per_worker=-1"),
        (1, 1, -1, "gpus_per_worker=-1"),
    ],
)
@pytest.mark.parametrize("autoscaling", [False, True])
def test_invalid_sizes_raise(workers: int, cpus: float, gpus: float, fragment: str, autoscaling: bool) -> None:
    with pytest.raises(ResourceError, match="workers must be >= 1") as info:
        max_concurrent_trials({"CPU": 8, "GPU": 2}, workers, cpus, gpus, autoscaling=autoscaling)
    assert fragment in str(info.value)
