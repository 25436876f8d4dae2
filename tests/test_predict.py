"""`emotune predict` on a real face clip: skimage's astronaut photo moved over a canvas, written as an mp4, detected
with OpenCV's Haar cascade (nothing downloaded) and predicted by a small checkpoint written here. The trained-model
checks (CCC of a sweep's best trial, runs:/ and models:/ sources, the pyfunc) are in ``tests/test_promote.py``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cluster.cli import main

FPS, SECONDS = 25, 3.0


def astronaut_clip(path: Path, seconds: float = SECONDS, fps: int = FPS, size: tuple[int, int] = (320, 240)) -> Path:
    """An mp4 of the astronaut's head and shoulders sliding left to right over a grey canvas."""
    import cv2
    from skimage.data import astronaut

    face = astronaut()[0:220, 120:300]
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    n = int(seconds * fps)
    for k in range(n):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x = int(10 + (w - face.shape[1] - 20) * k / max(n - 1, 1))
        canvas[10:10 + face.shape[0], x:x + face.shape[1]] = face
        out.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    out.release()
    return path


def small_checkpoint(path: Path, label_rate: float | None = None) -> Path:
    """A trial-style checkpoint of an untrained tiny CNN-GRU, with the registration settings of a cache prepared from
    precomputed boxes (so prediction must use a real detector)."""
    import torch

    from trainables.config import TrialConfig
    from trainables.loop import build_model
    from trainables.prepare.registration import Registration
    from dataclasses import asdict

    torch.manual_seed(0)
    cfg = TrialConfig(backbone="cnn_rnn_tiny", rnn_hidden=16, window_length=24, clip_len=24, ssts_stride=4)
    model = build_model(cfg, out_dims=2, in_chans=3)
    torch.save({"eval_model": model.state_dict(), "config": cfg.to_dict(), "postprocess": {}, "in_chans": 3,
                "out_dims": 2, "n_bins": 0, "registration": asdict(Registration(size=32)),
                "label_rate": label_rate}, path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    work = tmp_path_factory.mktemp("predict")
    return work, astronaut_clip(work / "astronaut.mp4"), small_checkpoint(work / "state.pt")


def test_predict_writes_csv_and_plot_with_faces_on_nearly_every_step(clip, capsys):
    work, video, model = clip
    # in process (the command line's start-up costs seconds; the README's lines run through it in test_promote.py)
    assert main(["predict", str(video), "--model", str(model), "--out", str(work / "out")]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(work / "out" / "astronaut.csv")
    assert list(table.columns) == ["time", "valence", "arousal", "face"]
    # one row per label step (the model's labels are per frame): the whole timeline, 0 .. 2.96 s
    assert len(table) == int(FPS * SECONDS)
    assert np.allclose(table["time"], np.arange(len(table)) / FPS)
    assert table["face"].mean() >= 0.95, table["face"].mean()
    assert np.isfinite(table[["valence", "arousal"]].to_numpy()).all()
    assert (work / "out" / "astronaut.png").stat().st_size > 5000
    assert "75 label steps" in out


def test_predict_at_the_model_label_rate(clip, tmp_path):
    """A model trained on per-second labels predicts one row per second of video."""
    from trainables.predict import Predictor, load_bundle

    _, video, _ = clip
    table = Predictor(load_bundle(small_checkpoint(tmp_path / "s.pt", label_rate=1.0)),
                      progress=False).predict_video(video)
    assert table["time"].tolist() == [0.0, 1.0, 2.0]


def test_predict_user_errors_are_one_line(clip, capsys):
    work, video, model = clip
    assert main(["predict", str(video), "--model", str(model), "--detector", "precomputed"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"emotune: error: video {video}: detector 'precomputed' needs a face sidecar (--faces); or use --detector "
        f"opencv"]
    assert main(["predict", str(video), "--model", str(work / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
