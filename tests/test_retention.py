"""Checkpoint retention of inline trials (cluster.retention): the best ``keep`` by the objective and the latest stay,
the rest go once superseded for the grace period, never before; state survives a resume. Driven with real folders on
the local filesystem and the callback hooks Tune calls, in the order Tune calls them."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyarrow import fs

from cluster.retention import CheckpointRetention


def _trial(trial_id: str = "t1"):
    return SimpleNamespace(trial_id=trial_id, last_result={}, storage=SimpleNamespace(storage_filesystem=fs.LocalFileSystem()))


def _save(cb: CheckpointRetention, trial, folder: Path, i: int, value: float) -> Path:
    path = folder / f"checkpoint_{i:06d}"
    path.mkdir()
    (path / "state.pt").write_bytes(b"x")
    trial.last_result = {"val_ccc_mean": value}
    cb.on_checkpoint(0, [trial], trial, SimpleNamespace(path=str(path)))
    return path


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mode, values, kept", [
    # keep 2 best + latest; ties go to the later checkpoint
    ("max", [0.1, 0.5, 0.3, 0.2, 0.4], [1, 4]),             # best 0.5 (1), 0.4 (4) which is also the latest
    ("max", [0.1, 0.2, 0.3, 0.4, 0.05], [2, 3, 4]),         # 0.4, 0.3 and the latest
    ("max", [0.3, 0.3, 0.3], [1, 2]),                       # equal scores: the later ones
    ("min", [0.9, 0.1, 0.5, 0.2, 0.7], [1, 3, 4]),          # lowest loss 0.1, 0.2 and the latest
    ("max", [math.nan, 0.2, math.nan], [1, 2]),             # a diverged report is never among the best
])
def test_the_best_and_the_latest_are_kept(tmp_path, mode, values, kept):
    cb = CheckpointRetention(keep=2, metric="val_ccc_mean", mode=mode, grace_s=0.0)
    trial = _trial()
    for i, v in enumerate(values):
        _save(cb, trial, tmp_path, i, v)
    cb.on_step_end(0, [trial])
    assert _left(tmp_path) == [f"checkpoint_{i:06d}" for i in kept]


def test_nothing_goes_before_the_grace_period_but_everything_at_the_end(tmp_path):
    cb = CheckpointRetention(keep=1, metric="val_ccc_mean", mode="max", grace_s=3600.0)
    trial = _trial()
    for i, v in enumerate([0.1, 0.2, 0.3]):
        _save(cb, trial, tmp_path, i, v)
    cb.on_step_end(0, [trial])
    assert len(_left(tmp_path)) == 3  # superseded, but a snapshot may still name them
    cb.on_experiment_end([trial])  # Tune has written its last snapshot
    assert _left(tmp_path) == ["checkpoint_000002"]


def test_a_resumed_sweep_deletes_what_the_dead_driver_had_left(tmp_path):
    cb = CheckpointRetention(keep=1, metric="val_ccc_mean", mode="max", grace_s=3600.0)
    trial = _trial()
    for i, v in enumerate([0.3, 0.1, 0.2]):
        _save(cb, trial, tmp_path, i, v)
    state = cb.get_state()  # what the snapshot held when the driver died
    resumed = CheckpointRetention(keep=1, metric="val_ccc_mean", mode="max", grace_s=3600.0)
    resumed.set_state(state)
    resumed.on_step_end(0, [trial])  # doomed in an earlier snapshot: due at once
    assert _left(tmp_path) == ["checkpoint_000000", "checkpoint_000002"]
    _save(resumed, trial, tmp_path, 3, 0.9)
    resumed.on_experiment_end([trial])
    assert _left(tmp_path) == ["checkpoint_000003"]
