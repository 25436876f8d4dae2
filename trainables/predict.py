"""Prediction on new videos: decode with decord, find and register faces as the model's training cache did, run dense
windows with the trial's inference views, map to the label timeline and apply the trial's post-processing.

A **model bundle** is everything prediction needs, in one ``torch.save`` file: the evaluated weights (``eval_model``),
the resolved trial config (``config``: windows, fps, sampler and SSTS views, augmentation-derived eval transform,
target multiplier), the fitted post-processing (``postprocess``), the tensor shapes (``in_chans``, ``out_dims``,
``n_bins``) and, from the training dataset index, the face registration (crop size, margin, grayscale, alignment,
fps, smoothing, score threshold) and the label timeline (``label_rate``, ``dims``, ``label_scale``). A trial's
``checkpoint/state.pt`` holds all but the last group; :func:`load_bundle` completes it from the dataset index the
config names (``data_index``), where ``emotune data prepare`` recorded the registration.

A model trained on ``precomputed`` boxes (a face sidecar) predicts with a real detector (``opencv`` by default), with
the training crop settings. Long videos stay in bounded memory: frames are decoded and registered in chunks into a
temporary memory-mapped crop file (the same code path as ``emotune data prepare``), and the model reads that file.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from trainables import console
from trainables.errors import UserError

__all__ = ["ModelBundle", "Predictor", "load_bundle", "label_times", "write_csv", "write_plot"]

BUNDLE_KEYS = ("eval_model", "config", "postprocess", "in_chans", "out_dims", "n_bins")


@dataclass
class ModelBundle:
    """Weights plus every setting prediction needs (see the module docstring)."""

    weights: dict
    config: dict
    postprocess: dict
    in_chans: int
    out_dims: int
    n_bins: int
    registration: dict
    label_rate: float | None = None
    dims: list[str] = field(default_factory=lambda: ["valence", "arousal"])
    label_scale: tuple[float, float] = (-1.0, 1.0)

    def to_state(self) -> dict:
        """The ``torch.save`` form (a superset of a trial's ``state.pt``)."""
        return {"eval_model": self.weights, "config": self.config, "postprocess": self.postprocess,
                "in_chans": self.in_chans, "out_dims": self.out_dims, "n_bins": self.n_bins,
                "registration": self.registration, "label_rate": self.label_rate, "dims": list(self.dims),
                "label_scale": list(self.label_scale)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        torch.save(self.to_state(), path)
        return path

    def settings(self) -> dict:
        """Everything but the weights, JSON-compatible (what ``production.yaml`` and the registry record)."""
        state = self.to_state()
        state.pop("eval_model")
        return json.loads(json.dumps(state, default=str))

    def trial_config(self):
        """The :class:`~trainables.config.TrialConfig` of the trial, without its file references (pretrained weights
        and pretext checkpoints are replaced by the trained weights)."""
        from trainables.config import SPECS, TrialConfig

        values = {k: v for k, v in self.config.items() if k in SPECS}
        values.update(pretrained=None, pretext_checkpoint=None)
        return TrialConfig(**values)

    def build_model(self) -> torch.nn.Module:
        from trainables.loop import build_model

        model = build_model(self.trial_config(), self.out_dims, self.in_chans, self.n_bins)
        model.load_state_dict(self.weights)
        return model.eval()


def _index_path(config: dict) -> str | None:
    if config.get("data_indexes"):
        return config["data_indexes"].get(config.get("registration"))
    return config.get("data_index")


def data_settings(index_path: str | Path) -> dict:
    """Registration and label timeline of a dataset index: ``registration``, ``label_rate``, ``dims``, ``label_scale``
    (the label settings from the first prepared video's cache entry).

    Raises:
        DataError: the index cannot be read.
    """
    from trainables.data.cache import cache_root, read_index

    index = read_index(index_path, hint="the model's registration settings are recorded there")
    out: dict[str, Any] = {"registration": index["registration"]}
    root = cache_root(index, index_path)
    for video in index.get("videos", [])[:1]:
        meta_file = root / video["entry"] / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            out.update(label_rate=meta.get("label_rate"), dims=meta.get("dims") or ["valence", "arousal"],
                       label_scale=tuple(meta.get("label_scale") or (-1.0, 1.0)))
    return out


def bundle_from_state(state: dict, index_path: str | Path | None = None) -> ModelBundle:
    """A bundle from a checkpoint dict; registration and label settings come from the checkpoint when it has them
    (a bundle file), else from ``index_path`` or the dataset index its config names.

    Raises:
        UserError: the dict is not an emotune checkpoint, or the registration settings cannot be found.
    """
    missing = [k for k in BUNDLE_KEYS if k not in state]
    if missing:
        raise UserError(f"not an emotune checkpoint: it lacks {', '.join(missing)}")
    extra: dict[str, Any] = {k: state[k] for k in ("registration", "label_rate", "dims", "label_scale")
                             if state.get(k) is not None}
    if "registration" not in extra:
        index = index_path or _index_path(state["config"])
        if index is None:
            raise UserError("the checkpoint names no dataset index, so its face registration settings are unknown")
        extra = {**data_settings(index), **extra}
    if "label_scale" in extra:
        extra["label_scale"] = tuple(float(v) for v in extra["label_scale"])
    return ModelBundle(weights=state["eval_model"], config=state["config"], postprocess=state["postprocess"] or {},
                       in_chans=int(state["in_chans"]), out_dims=int(state["out_dims"]),
                       n_bins=int(state["n_bins"] or 0), **extra)


def load_bundle(path: str | Path, index_path: str | Path | None = None) -> ModelBundle:
    """Read a trial's ``state.pt`` or a bundle file written by :meth:`ModelBundle.save`.

    Raises:
        UserError: no such file, or not an emotune checkpoint.
        DataError: not a torch file, or one that pickles objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path}: no such file (a trial's checkpoint/state.pt, runs:/<run_id> or "
                        f"models:/<name>@<alias>)")
    from trainables.session import load_state_file

    # weights_only: a model file (a trial's checkpoint, a registry download) holds tensors and plain values only;
    # a file pickling anything else is refused with a DataError naming it, never unpickled.
    state = load_state_file(path, map_location="cpu")
    if not isinstance(state, dict):
        raise UserError(f"model {path} is not an emotune checkpoint")
    return bundle_from_state(state, index_path)


def label_times(duration_s: float, label_rate: float | None, fps: float) -> np.ndarray:
    """Label step times (seconds) of a video lasting ``duration_s``: k / rate for every step inside the video (one
    step per frame at ``fps`` when the training labels had no rate of their own)."""
    rate = float(label_rate) if label_rate else float(fps)
    count = max(1, int(math.ceil(duration_s * rate - 1e-6)))
    return np.arange(count, dtype=np.float64) / rate


class _MeteredReader:
    """A decord reader that advances a progress bar by the frames each chunk decodes and adds up the decoding time."""

    def __init__(self, reader, bar):
        self._reader, self._bar, self.seconds = reader, bar, 0.0

    def get_batch(self, idx):
        started = time.perf_counter()
        out = self._reader.get_batch(idx)
        self.seconds += time.perf_counter() - started
        self._bar.update(len(idx))
        return out

    def __getattr__(self, name):
        return getattr(self._reader, name)


class Predictor:
    """Predict valence/arousal per label step on new videos with one model bundle.

    Args:
        bundle: the model.
        detector: ``opencv`` (default, nothing to download), ``face_alignment`` (local weights), or ``precomputed``
            (a face sidecar per video, as ``data prepare`` reads them).
        device: torch device.
        progress: a tqdm bar per video.
    """

    def __init__(self, bundle: ModelBundle, detector: str = "opencv", device: str = "cpu", progress: bool = True,
                 batch_size: int = 32):
        from trainables.data.augment import build_eval_transform
        from trainables.prepare.registration import DETECTORS, Registration

        if detector not in DETECTORS:
            raise UserError(f"detector {detector!r} is unknown; allowed: {', '.join(DETECTORS)}")
        reg = dict(bundle.registration)
        if isinstance(reg.get("size"), list):
            reg["size"] = tuple(reg["size"])
        self.reg = Registration(**{**reg, "detector": detector})
        self.bundle, self.device, self.progress, self.batch_size = bundle, torch.device(device), progress, batch_size
        self.cfg = bundle.trial_config()
        self.spec = self.cfg.clip_spec()
        self.model = bundle.build_model().to(self.device)
        self.transform = build_eval_transform(self.cfg.augmentations(), frame_size=self.reg.hw)
        self._detector = None
        #: Seconds of the last video: ``frames`` (decoding, face detection and cropping: decoding runs in a thread of
        #: its own, beside detection), ``decode`` (the decode thread's busy time inside that), ``model`` (windows,
        #: views, the network).
        self.timings: dict[str, float] = {}

    @property
    def detector(self):
        if self._detector is None and self.reg.detector != "precomputed":
            from trainables.prepare.faces import create_detector

            kwargs = {"face_detector": self.reg.face_detector} if self.reg.detector == "face_alignment" else {}
            self._detector = create_detector(self.reg.detector, **kwargs)
        return self._detector

    def predict_video(self, path: str | Path, faces: str | Path | None = None):
        """A DataFrame with ``time`` and one column per dimension (on the dataset's own label scale) and ``face``,
        one row per label step at the model's label rate.

        Raises:
            UserError: the video cannot be decoded; ``precomputed`` without a face sidecar.
        """
        import pandas as pd
        from tqdm import tqdm

        from trainables.data.cache import CachedVideo, kept_frame_indices
        from trainables.data.clips import VideoView, predict_timeline
        from trainables.data.labels import label_frame_index
        from trainables.objectives.postprocess import PostProcess
        from trainables.prepare.build import detect_and_crop
        from trainables.prepare.decode import open_video

        path = Path(path)
        if self.reg.detector == "precomputed" and faces is None:
            raise UserError(f"video {path}: detector 'precomputed' needs a face sidecar (--faces); or use --detector "
                            f"opencv")
        reader, native_fps, n = open_video(path)
        keep = kept_frame_indices(n, native_fps, self.reg.fps)
        out_fps = self.reg.fps or native_fps
        h, w = self.reg.hw
        c = 1 if self.reg.grayscale else 3
        times = label_times(n / native_fps, self.bundle.label_rate, native_fps)
        with tempfile.TemporaryDirectory(prefix="emotune-predict-") as tmp:
            frames = np.lib.format.open_memmap(Path(tmp) / "frames.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(keep), h, w, c))
            bar = tqdm(total=len(keep), desc=path.name, unit="frame", disable=not (self.progress and console.bars()), leave=False,
                       file=console.bar_stream())
            metered = _MeteredReader(reader, bar)
            started = time.perf_counter()
            try:
                entry = SimpleNamespace(video_id=path.stem, path=path, faces=None if faces is None else Path(faces))
                valid, scores = detect_and_crop(entry, metered, n, keep, frames, self.reg, self.detector)
            finally:
                bar.close()
            faces_done = time.perf_counter()
            frames.flush()
            del frames
            d = self.bundle.out_dims
            video = CachedVideo(video_id=path.stem, frames=np.load(Path(tmp) / "frames.npy", mmap_mode="r"),
                                valid=valid, scores=scores, labels=np.zeros((len(times), d), dtype=np.float32),
                                meta={"fps": out_fps}, label_frames=label_frame_index(times, out_fps, len(keep)),
                                label_times=times)
            view = VideoView(video, self.spec.fps)
            grid = predict_timeline(self.model, video, self.spec, self.device, batch_size=self.batch_size,
                                    seed=self.cfg.seed, transform=self.transform, view=view)
            self.timings = {"frames": faces_done - started, "decode": metered.seconds,
                            "model": time.perf_counter() - faces_done}
            preds = grid[view.label_pos] / self.cfg.target_multiplier
            face = view.valid[view.label_pos].astype(bool)
            del video, view
        preds = PostProcess.from_dict(self.bundle.postprocess).apply(preds) if self.bundle.postprocess else preds
        if tuple(self.bundle.label_scale) != (-1.0, 1.0):
            from trainables.data.labels import from_unit

            preds = from_unit(preds, tuple(self.bundle.label_scale))
        if self.cfg.faceless == "affwild2":
            from trainables.objectives.affwild2 import fill_faceless

            # Aff-Wild2's rule, as the model was scored: -5 before the first face, else the previous prediction.
            preds = fill_faceless(preds, face)
        dims = list(self.bundle.dims)[:d] if len(self.bundle.dims) >= d else [str(i) for i in range(d)]
        table = pd.DataFrame({"time": np.round(times, 6)})
        for j, name in enumerate(dims):
            table[name] = preds[:, j]
        table["face"] = face
        return table


def write_csv(table, out_dir: str | Path, stem: str) -> Path:
    out = Path(out_dir) / f"{stem}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6f")
    return out


def write_plot(table, out_dir: str | Path, stem: str) -> Path:
    """Every dimension's curve over time, label steps without a face shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir) / f"{stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = table["time"].to_numpy()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for name in [col for col in table.columns if col not in ("time", "face", "video")]:
        ax.plot(t, table[name].to_numpy(), label=name, lw=1.2)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    no_face = ~table["face"].to_numpy(dtype=bool)
    start = None
    for i, missing in enumerate(list(no_face) + [False]):
        if missing and start is None:
            start = i
        elif not missing and start is not None:
            ax.axvspan(t[start] - step / 2, t[i - 1] + step / 2, color="0.85", lw=0,
                       label="no face" if start == int(np.argmax(no_face)) else None)
            start = None
    ax.set_xlabel("time (s)")
    ax.set_title(stem)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def predict_files(bundle: ModelBundle, videos: list[str | Path], out_dir: str | Path, detector: str = "opencv",
                  faces: list[str | Path] | None = None, progress: bool = True) -> list[tuple[Path, Path, Any]]:
    """Predict every video and write ``<stem>.csv`` and ``<stem>.png`` into ``out_dir``; returns
    (csv, png, table) per video."""
    if faces and len(faces) != len(videos):
        raise UserError(f"--faces: {len(faces)} sidecar(s) for {len(videos)} video(s); give one per video, in order")
    predictor = Predictor(bundle, detector=detector, progress=progress)
    out = []
    for i, video in enumerate(videos):
        table = predictor.predict_video(video, faces[i] if faces else None)
        stem = Path(video).stem
        out.append((write_csv(table, out_dir, stem), write_plot(table, out_dir, stem), table))
    return out

