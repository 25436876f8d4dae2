"""Choosing where a trial trains, and what its process reserves."""
from __future__ import annotations

import pytest

from trainables.trial import TRIAL_DRIVER_RESOURCES, choose_executor, trial_resources


def test_auto_trains_one_worker_inline_and_several_with_ray_train():
    assert choose_executor("auto", 1) == "inline"
    assert choose_executor("auto", 2) == "train"
    assert choose_executor("train", 1) == "train"  # a single Ray Train worker stays possible


def test_inline_with_several_workers_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="workers=4.*--executor train"):
        choose_executor("inline", 4)


def test_unknown_executor_names_the_choices():
    with pytest.raises(ValueError, match="'thread'.*auto, inline, train"):
        choose_executor("thread", 1)


def test_inline_trial_holds_its_workers_cpus_and_gpus():
    runtime = {"executor": "inline", "cpus_per_worker": 2.0, "gpus_per_worker": 0.5}
    assert trial_resources({"runtime": runtime}).bundles == [{"CPU": 2.0, "GPU": 0.5}]
    runtime = {"executor": "inline", "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}
    assert trial_resources({"runtime": runtime}).bundles == [{"CPU": 1.0}]


def test_train_trial_holds_memory_only_so_its_workers_can_start():
    runtime = {"executor": "train", "cpus_per_worker": 1.0, "gpus_per_worker": 0.0}
    bundles = trial_resources({"runtime": runtime}).bundles
    assert bundles == [{"memory": float(TRIAL_DRIVER_RESOURCES["memory"])}]  # no CPU: Ray drops the zero
