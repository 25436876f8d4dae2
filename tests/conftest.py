"""Shared pytest fixtures.

Session-scoped fixtures build their data once per test run under ``tmp_path_factory``; tests must treat what they
return as read-only (copy files into ``tmp_path`` before editing them).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

# Small synthetic dataset: 3 subjects (one per split), one 80-frame 64x64 video each.
SYNTH_PARAMS = dict(subjects=3, videos_per_subject=1, frames=80, size=64, seed=0, progress=False)
# Face crop size of the prepared cache used by the data-path and clip tests.
CROP_SIZE = 32


@pytest.fixture(scope="session")
def synth_manifest(tmp_path_factory) -> Path:
    """``manifest.csv`` of a small synthetic dataset (real mp4 files, labels, face sidecars); see ``SYNTH_PARAMS``."""
    from trainables.prepare.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "ds", **SYNTH_PARAMS)


@pytest.fixture(scope="session")
def _prepared(synth_manifest, tmp_path_factory):
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare

    cache_root = tmp_path_factory.mktemp("cache")
    return prepare(synth_manifest, cache_root, Registration(size=CROP_SIZE), workers=1, progress=False)


@pytest.fixture(scope="session")
def prepared_index(_prepared) -> Path:
    """Dataset index JSON of ``synth_manifest`` prepared with ``Registration(size=CROP_SIZE)``; the cache entries sit
    next to it (``prepared_index.parent``)."""
    return _prepared[0]


@pytest.fixture(scope="session")
def prepare_summary(_prepared):
    """The ``PrepareSummary`` of the run that built ``prepared_index``."""
    return _prepared[1]


def _selects_slow(config) -> bool:
    expr = config.getoption("markexpr") or ""
    return "slow" in expr and "not slow" not in expr


@pytest.fixture(scope="session", autouse=True)
def neighbours(request):
    """The suite is a good neighbour: the user's processes that run when it starts (older than a minute, in sessions
    other than the one running pytest) still run when it ends, and so do two bystanders it starts for the purpose, a
    ``sleep`` and, when slow tests run, a Ray head started with ``ray start --head`` (the machine's latest cluster
    while the suite runs). A test that ends a process it did not start (a shutdown of every Ray of the user, a kill
    chosen by command line) fails the run here."""
    from tests.processes import bystander_ray, end, gone, start, user_processes

    before = user_processes(min_age_s=60)  # younger ones (another test run's sweeps) come and go by themselves
    sleeper = start(["sleep", "86400"])
    with contextlib.ExitStack() as stack:
        ray_head = stack.enter_context(bystander_ray())[0] if _selects_slow(request.config) else None
        yield
        ended = [name for name, proc in (("the bystander sleep", sleeper), ("the bystander Ray", ray_head))
                 if proc is not None and proc.poll() is not None]
        end(sleeper)
    lost = ended + gone(before)
    if lost:
        pytest.fail(f"the suite ended processes it did not start: {', '.join(lost)}", pytrace=False)


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and the machine is shared: one torch thread for the test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
