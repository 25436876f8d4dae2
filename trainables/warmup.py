"""Import the training code in a sweep's worker processes before their first trial asks for it.

An inline trial's process imports the training loop (torch, torchvision, timm and the models: about 3 s on a quiet
2-core machine, more under load) when its first trial starts, so each slot's first trial started that much later.
The sweep's driver names :func:`start` as its local Ray's ``worker_process_setup_hook`` (``cluster.sweep.init_ray``):
every worker process of the sweep runs it as it starts, before it hosts a trial. :func:`start` only starts a
background thread and returns, so the process registers with Ray as fast as before; the import then runs while the
driver is still setting up Tune (the searcher, the MLflow parent run, the scheduler) and while Tune creates the trial's
actor. The trial calls :func:`wait` before its own import of the loop.

Why a thread joined before the trial's import, not two imports racing: Python's per-module import locks make a
second importer of the same module wait, but two threads importing overlapping module graphs in different orders can
hit the import system's deadlock detection, which hands one of them a partly initialised module. Joining first keeps
one importer at a time.

Judgment call: the warm-up is best effort. Any failure here is swallowed (the hook must never keep a worker from
starting); the trial's own import then raises the real error where the user sees it.
"""
from __future__ import annotations

import threading
import time

#: What Ray's ``worker_process_setup_hook`` names (a module path, so that nothing is pickled into Ray's store).
HOOK = f"{__name__}.start"

_thread: threading.Thread | None = None
_started_at: float | None = None


def start() -> None:
    """Start importing the training loop in the background (once per process)."""
    global _thread, _started_at
    if _thread is None:
        _started_at = time.time()
        _thread = threading.Thread(target=_import_loop, name="emotune-warmup", daemon=True)
        _thread.start()


def wait() -> None:
    """Return once the background import (if any was started) has ended, whether it succeeded or not."""
    if _thread is not None:
        _thread.join()


def marks() -> dict[str, float]:
    """``warmup_started_at`` (wall-clock seconds) when this process started its warm-up, for the trial's reports
    (``benchmarks/bench_sweep_overhead.py``); empty when it did not."""
    return {} if _started_at is None else {"warmup_started_at": _started_at}


def _import_loop() -> None:
    try:
        import trainables.loop  # noqa: F401
    except BaseException:  # noqa: BLE001 -- best effort: the trial's own import reports the error
        pass
