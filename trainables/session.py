"""Where a trial's training loop runs, and how it reports: the two executors of ``trainables.trial``.

``fit`` (``trainables.loop``) speaks only to these objects, so the same loop trains inside a Ray Train worker (DDP over
several workers, each a process of its own) or directly inside the Tune trial process (one worker, no worker group to
start). Both offer the same six things: the worker's rank, its device, model and loader preparation, the checkpoint
to resume from, ``report(metrics, checkpoint_dir)``, and ``should_stop()`` (checked between batches); and ``marks``,
wall-clock times of the worker's start-up that every report carries.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainables.storage import storage_uri


def load_state_file(path: str | Path, map_location=None, shown: str | None = None):
    """A trial's checkpoint, read as data (``trainables.torchfile``). ``shown`` names the file in errors.

    Raises:
        DataError: the file holds pickled objects other than tensors and plain values, or is not a torch file.
    """
    from trainables.torchfile import load_torch_file

    return load_torch_file(path, map_location=map_location, shown=shown)


class _Session:
    """What both executors share: ``api`` is ``ray.train`` or ``ray.tune``, which offer the same checkpoint calls."""

    def __init__(self, api):
        self._api = api
        # Wall-clock times of this worker's start-up (trial entered, loop started, data and model built), reported
        # with every result so a sweep's overhead can be located.
        self.marks: dict[str, float] = {}

    def load_state(self, device: torch.device) -> dict | None:
        checkpoint = self._api.get_checkpoint()
        if checkpoint is None:
            return None
        # A checkpoint read back from shared storage (a bucket, NFS) is data, never code: tensors and plain values only.
        with checkpoint.as_directory() as folder:
            where = storage_uri(checkpoint.path, checkpoint.filesystem)
            return load_state_file(Path(folder) / "state.pt", device, shown=f"{where}/state.pt")

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        ckpt = self._api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._api.report(metrics, checkpoint=ckpt)

    def should_stop(self) -> bool:
        """Whether this trial was told to stop: the loop then ends at once instead of finishing its epoch."""
        return False


class TrainWorkerSession(_Session):
    """One worker of a Ray Train ``TorchTrainer``: DDP wrapping, distributed sampler, Train's checkpoints.

    ``should_stop`` stays False: Ray Train (V2) gives a worker no stop request to poll; it ends a stopped run by tearing
    down the worker group (every worker process), which needs no help from the loop.
    """

    def __init__(self):
        import ray.train
        import ray.train.torch

        super().__init__(ray.train)
        self._torch = ray.train.torch
        self.rank = ray.train.get_context().get_world_rank()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module, unused_parameters: bool = False) -> torch.nn.Module:
        """DDP around ``model``. ``unused_parameters``: some trainable parameters may get no gradient in a step (a
        pretraining method trains the encoder, not the backbone's heads), which DDP must be told or it fails."""
        kwargs = {"parallel_strategy_kwargs": {"find_unused_parameters": True}} if unused_parameters else {}
        return self._torch.prepare_model(model, **kwargs)

    def prepare_data_loader(self, loader):
        return self._torch.prepare_data_loader(loader)


class TuneTrialSession(_Session):
    """The Tune trial process as the only worker: the first visible GPU when the trial holds one, else the CPU;
    checkpoints go to Tune, which restores the last one when the trial is retried or the sweep resumed.

    The loop runs in a thread of the trial process. A stopped trial (ASHA, the end of the sweep) must let that thread
    end promptly, because the next trial reuses the process only once it has (``trainables.trial.ReusableTrial``).
    Tune's function-trainable session asks a thread to stop by setting its ``stop_event`` (in
    ``_TrainSession.finish``) and acts on it only inside ``report``. ``should_stop`` reads that event, so the loop can
    also stop between batches; the event is the one of *this* trial's session (taken when the loop starts), so a thread
    left behind by a stopped trial still sees its own stop request after the process has been reset for the next one,
    and ``report`` then refuses to report into that next trial.
    """

    rank = 0

    def __init__(self, gpus: float = 0.0):
        import ray.tune

        super().__init__(ray.tune)
        use_cuda = gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        session = _function_trainable_session()
        self._stop_event = getattr(session, "stop_event", None)
        _train_while_reports_are_handled(session)

    def should_stop(self) -> bool:
        return self._stop_event is not None and self._stop_event.is_set()

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if self.should_stop():
            # What Ray's session does when a stopped thread reaches report: end the thread quietly (the runner thread
            # takes SystemExit(0) as a normal end), without reporting a result nobody waits for.
            raise SystemExit(0)
        super().report(metrics, checkpoint_dir)

    def prepare_model(self, model: torch.nn.Module, unused_parameters: bool = False) -> torch.nn.Module:
        return model.to(self.device)

    def prepare_data_loader(self, loader):
        return loader


def _train_while_reports_are_handled(session) -> None:
    """Let this trial's thread go on training as soon as Tune has taken a report, instead of after the driver has
    handled it.

    Tune's function trainable reports synchronously: ``report`` returns only when the driver asks the trial for its
    next result, after it has run every callback on this one (MLflow records, Tune's loggers, the searcher, ASHA)
    and saved its checkpoint. The trial sat idle for that round trip at every epoch and at its end (measured with
    ``benchmarks/bench_sweep_overhead.py``). Ray Train's workers use the same session in its asynchronous mode, which
    is switched on here: the session hands the thread its turn right after the result is fetched. At most one report
    is in flight (the session's queue holds one), checkpoints are persisted by this thread before the report, and a
    stop (ASHA, the end of the sweep) reaches the thread through ``should_stop`` between batches or at its next
    report. Judgment call: a stopped trial may train a few batches of an epoch nobody will see; that costs less than
    idling at every report.
    """
    if session is not None and hasattr(session, "synchronous_result_reporting"):
        session.synchronous_result_reporting = False


def _function_trainable_session():
    """The Tune function-trainable session running this thread, or None outside one (or with a Ray without it). Ray
    has no public call for it: ``ray.train._internal.session`` is the session object Tune's ``FunctionTrainable``
    drives (``finish`` sets its ``stop_event``, ``reset`` replaces that with a new one per trial)."""
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # pragma: no cover - a Ray without the V1 session: never stop early, report as it does
        return None
    return get_session()
