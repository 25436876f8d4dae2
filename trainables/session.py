"""Where a trial's training loop runs, and how it reports: the two executors of ``trainables.trial``.

``fit`` (``trainables.loop``) speaks only to these objects, so the same loop trains inside a Ray Train worker (DDP over
several workers, each a process of its own) or directly inside the Tune trial process (one worker, no worker group to
start). Both offer the same five things: the worker's rank, its device, model and loader preparation, the checkpoint
to resume from, and ``report(metrics, checkpoint_dir)``.
"""
from __future__ import annotations

from pathlib import Path

import torch


class _Session:
    """What both executors share: ``api`` is ``ray.train`` or ``ray.tune``, which offer the same checkpoint calls."""

    def __init__(self, api):
        self._api = api

    def load_state(self, device: torch.device) -> dict | None:
        checkpoint = self._api.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / "state.pt", map_location=device, weights_only=False)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        ckpt = self._api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._api.report(metrics, checkpoint=ckpt)


class TrainWorkerSession(_Session):
    """One worker of a Ray Train ``TorchTrainer``: DDP wrapping, distributed sampler, Train's checkpoints."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        super().__init__(ray.train)
        self._torch = ray.train.torch
        self.rank = ray.train.get_context().get_world_rank()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._torch.prepare_model(model)

    def prepare_data_loader(self, loader):
        return self._torch.prepare_data_loader(loader)


class TuneTrialSession(_Session):
    """The Tune trial process as the only worker: the first visible GPU when the trial holds one, else the CPU;
    checkpoints go to Tune, which restores the last one when the trial is retried or the sweep resumed."""

    rank = 0

    def __init__(self, gpus: float = 0.0):
        import ray.tune

        super().__init__(ray.tune)
        use_cuda = gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def prepare_data_loader(self, loader):
        return loader
