"""Tests for trainables.data.clips: training windows over cached videos and dense timeline prediction.

Uses the session fixture ``prepared_index`` (tests/conftest.py): three 80-frame synthetic videos, 32x32 crops. Expected
values are computed from the cache arrays with independent code (plain loops), not with the functions under test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.data.clips import ClipSpec, TrainWindows, predict_timeline, to_tensor
from trainables.data.cache import load_split

T = 80
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def videos(prepared_index):
    return [v for split in ("train", "val", "test") for v in load_split(prepared_index, split)]


def _starts(num_frames: int, length: int, overlap: float) -> list[int]:
    step = max(1, round(length * (1 - overlap)))
    return list(range(0, num_frames - length + 1, step))


def _expected_windows(videos, spec: ClipSpec) -> list[tuple[int, int]]:
    """(video index, start) of every full window with at least clip_len valid frames, in dataset order."""
    out = []
    for v_i, v in enumerate(videos):
        for s in _starts(v.num_frames, spec.length, spec.overlap):
            if int(np.asarray(v.valid[s:s + spec.length]).sum()) >= spec.clip_len:
                out.append((v_i, s))
    return out


def _frame_positions(clip: torch.Tensor, window_frames: np.ndarray) -> list[int]:
    """Position inside the window of every clip frame, found by pixel equality after undoing to_tensor."""
    pixels = np.rint((clip.permute(0, 2, 3, 1).numpy().astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
    pos = []
    for img in pixels:
        hits = [j for j in range(len(window_frames)) if np.array_equal(window_frames[j], img)]
        assert len(hits) == 1, f"clip frame matches window frames {hits}"
        pos.append(hits[0])
    return pos


# ---------------------------------------------------------------------------
# ClipSpec
# ---------------------------------------------------------------------------

def test_clipspec_refuses_window_shorter_than_clip():
    with pytest.raises(ValueError, match="window_length=16 is shorter than clip_len=24"):
        ClipSpec(length=16, clip_len=24)
    with pytest.raises(ConfigError, match="window_length=20 is shorter than clip_len=21"):
        TrialConfig.from_dict({"window_length": 20, "clip_len": 21})
    assert ClipSpec(length=24, clip_len=24).length == 24  # equal is allowed


def test_clipspec_from_trial_config():
    spec = TrialConfig.from_dict({"window_length": 40, "window_overlap": 0.25, "label_fusion": "median",
                                  "clip_len": 12, "ssts_stride": 3, "ssts_stochastic": False}).clip_spec()
    assert spec == ClipSpec(length=40, overlap=0.25, fusion="median", clip_len=12, stride=3, stochastic=False)
    assert TrialConfig.from_dict({}).clip_spec() == ClipSpec()


# ---------------------------------------------------------------------------
# TrainWindows
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("length,overlap,clip_len,expected_len", [
    (32, 0.5, 24, 12),  # every window of every video has >= 24 faces
    (32, 0.5, 30, 9),   # three windows have only 29 faces
    (32, 0.5, 32, 6),   # windows without a single missing face
    (40, 0.75, 38, 7),  # step 10: five windows per video with 36..40 faces
])
def test_train_windows_length(videos, length, overlap, clip_len, expected_len):
    spec = ClipSpec(length=length, overlap=overlap, clip_len=clip_len, stride=1)
    ds = TrainWindows(videos, spec, seed=0)
    expected = _expected_windows(videos, spec)
    assert len(ds) == len(expected) == expected_len


def test_train_windows_none_left(videos):
    with pytest.raises(ValueError, match="no training window"):
        TrainWindows(videos, ClipSpec(length=80, overlap=0.5, clip_len=80, stride=1))


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 6])
def test_train_window_items(videos, stride):
    spec = ClipSpec(length=32, overlap=0.5, clip_len=24, stride=stride)
    ds = TrainWindows(videos, spec, seed=3)
    expected = _expected_windows(videos, spec)
    assert len(ds) == len(expected)
    for i in (0, len(ds) // 2, len(ds) - 1):
        clip, label = ds[i]
        assert clip.shape == (24 // stride, 3, 32, 32) and clip.dtype == torch.float32
        assert float(clip.min()) >= -1.0 and float(clip.max()) <= 1.0
        # The clip is made of the window's face frames, in temporal order.
        v_i, s = expected[i]
        v = videos[v_i]
        pos = _frame_positions(clip, np.asarray(v.frames[s:s + 32]))
        assert pos == sorted(set(pos))
        assert all(v.valid[s + p] for p in pos)
        # Fused label = mean of the window's per-frame labels.
        assert label.shape == (2,) and label.dtype == torch.float32
        np.testing.assert_allclose(label.numpy(), np.asarray(v.labels[s:s + 32], np.float64).mean(axis=0),
                                   rtol=0, atol=1e-6)


def test_train_window_labels_all_windows(videos):
    spec = ClipSpec(length=32, overlap=0.5, clip_len=30, stride=2)
    ds = TrainWindows(videos, spec)
    expected = _expected_windows(videos, spec)
    got = np.stack([ds[i][1].numpy() for i in range(len(ds))])
    want = np.stack([np.asarray(videos[v].labels[s:s + 32], np.float64).mean(axis=0) for v, s in expected])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_train_window_draws_are_seeded_by_seed_epoch_index(videos):
    spec = ClipSpec(length=32, overlap=0.5, clip_len=24, stride=2)
    a, b = TrainWindows(videos, spec, seed=7), TrainWindows(videos, spec, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    i = 5
    assert torch.equal(a[i][0], b[i][0])
    assert torch.equal(a[i][0], a[i][0])
    _ = b[i + 1]  # what else was loaded before does not matter
    assert torch.equal(a[i][0], b[i][0])

    v_i, s = _expected_windows(videos, spec)[i]
    window = np.asarray(videos[v_i].frames[s:s + 32])
    draw_epoch2 = _frame_positions(a[i][0], window)
    a.set_epoch(3)
    draw_epoch3 = _frame_positions(a[i][0], window)
    assert draw_epoch3 != draw_epoch2
    assert torch.equal(a[i][1], b[i][1])  # the label does not depend on the draw
    a.set_epoch(2)
    assert _frame_positions(a[i][0], window) == draw_epoch2
    c = TrainWindows(videos, spec, seed=8)
    c.set_epoch(2)
    assert _frame_positions(c[i][0], window) != draw_epoch2


def test_train_windows_skip_unlabelled_windows(videos):
    """A window whose labels are all NaN is not a training window, even with enough faces."""
    from dataclasses import replace

    v = videos[0]
    labels = np.array(v.labels, copy=True)
    labels[:32] = np.nan  # the first window (0..31) loses every label; the window at 16 keeps 16..47
    spec = ClipSpec(length=32, overlap=0.5, clip_len=24, stride=1)
    ds = TrainWindows([replace(v, labels=labels)], spec)
    assert len(ds) == len(_expected_windows([v], spec)) - 1
    np.testing.assert_allclose(ds[0][1].numpy(), np.asarray(v.labels[32:48], np.float64).mean(axis=0), atol=1e-6)


def test_the_windows_of_the_same_videos_are_computed_once_per_process(videos):
    """Trials of one process get the same videos from ``load_split``: their windows are computed once for each window
    setting, every dataset still gets lists of its own; other videos (here copies) get their own windows."""
    from dataclasses import replace

    spec = ClipSpec(length=32, overlap=0.5, clip_len=24, stride=1)
    a, b = TrainWindows(videos, spec, seed=0), TrainWindows(videos, spec, seed=5)
    assert b.views is a.views and b.items == a.items and b.items is not a.items
    np.testing.assert_array_equal(b.labels, a.labels)
    assert not np.shares_memory(b.labels, a.labels)
    wider = TrainWindows(videos, ClipSpec(length=48, overlap=0.5, clip_len=24, stride=1))
    assert wider.views is not a.views and wider.items == _expected_windows(videos, wider.spec)
    copies = TrainWindows([replace(v) for v in videos], spec)
    assert copies.views is not a.views and copies.items == a.items


# ---------------------------------------------------------------------------
# predict_timeline
# ---------------------------------------------------------------------------

class ConstantModel(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = torch.tensor(value, dtype=torch.float32)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return {"window": self.value.expand(x.shape[0], -1).clone()}


class MeanPixelModel(torch.nn.Module):
    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4))
        return {"window": torch.stack([m, -0.5 * m], dim=1)}


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_predict_timeline_constant_model(videos, stride):
    value = [0.375, -1.25]  # exact in binary, so averaging copies of it is exact
    model = ConstantModel(value)
    spec = ClipSpec(length=32, overlap=0.6, clip_len=24, stride=stride)
    out = predict_timeline(model, videos[0], spec, CPU, batch_size=2)
    assert out.shape == (T, 2)
    np.testing.assert_array_equal(out, np.tile(value, (T, 1)))
    # dense windows 0, 13, 26, 39 and the end-aligned 48: 5 windows x stride views, in batches of <= 2 windows
    assert sum(s[0] for s in model.shapes) == 5 * stride
    assert {s[1:] for s in model.shapes} == {(24 // stride, 3, 32, 32)}


def test_predict_timeline_mean_pixel_model(videos):
    spec = ClipSpec(length=32, overlap=0.6, clip_len=24, stride=2)
    for v in videos:
        out = predict_timeline(MeanPixelModel(), v, spec, CPU, seed=1)
        assert out.shape == (T, 2)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out[:, 1], -0.5 * out[:, 0], rtol=1e-6)
        assert (np.abs(out) <= 1).all() and np.ptp(out[:, 0]) > 0
        np.testing.assert_array_equal(out, predict_timeline(MeanPixelModel(), v, spec, CPU, seed=1))


def test_predict_timeline_exact_values_without_stochasticity(videos):
    """stochastic=False: each window's clip is its first clip_len face frames (all its frames if it has fewer), the
    stride views are averaged, and each frame averages the windows covering it -- recomputed here by hand."""
    spec = ClipSpec(length=32, overlap=0.6, clip_len=30, stride=2, stochastic=False)
    v = videos[0]
    out = predict_timeline(MeanPixelModel(), v, spec, CPU)
    frames = np.asarray(v.frames, np.float64) / 127.5 - 1.0
    starts = [0, 13, 26, 39, 48]
    sums, counts = np.zeros(T), np.zeros(T)
    fallback = 0
    for s in starts:
        pos = [s + j for j in range(32) if v.valid[s + j]]
        if len(pos) < 30:
            pos, fallback = list(range(s, s + 32)), fallback + 1
        clip = pos[:30]
        pred = np.mean([frames[clip[k::2]].mean() for k in range(2)])
        sums[s:s + 32] += pred
        counts[s:s + 32] += 1
    assert fallback >= 1  # this video has windows with fewer than 30 faces
    np.testing.assert_allclose(out[:, 0], sums / counts, rtol=0, atol=1e-5)


def test_predict_timeline_short_video_is_neutral(videos):
    from dataclasses import replace

    v = videos[0]
    short = replace(v, frames=v.frames[:20], valid=v.valid[:20], scores=v.scores[:20], labels=v.labels[:20])
    model = ConstantModel([0.5, 0.5])
    out = predict_timeline(model, short, ClipSpec(length=32, clip_len=24), CPU)
    np.testing.assert_array_equal(out, np.zeros((20, 2)))
    assert model.shapes == []


def test_to_tensor_range():
    x = np.array([[[[0, 255, 127]]]], dtype=np.uint8)  # (T=1, H=1, W=1, C=3)
    t = to_tensor(x)
    assert t.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(t.flatten().numpy(), [-1.0, 1.0, 127 / 127.5 - 1.0], rtol=0, atol=1e-7)


class WholeClipsOnly(torch.nn.Module):
    """The same network seen through ``forward`` only (no per-frame protocol): the reference for feature sharing."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.clip_frames = 0

    def forward(self, x):
        self.clip_frames += x.shape[0] * x.shape[1]
        return self.model(x)


class MirrorFrames:
    per_frame = True

    def __call__(self, clip):
        return clip.flip(-1)


class CountingEncoder(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.frames = encoder, 0

    def forward(self, x):
        self.frames += x.shape[0]
        return self.encoder(x)


@pytest.mark.parametrize("target,stride", [("window", 2), ("window", 1), ("sequence", 3)])
def test_shared_frame_features_give_the_clip_by_clip_predictions(videos, target, stride):
    """A CNN-RNN evaluates each frame's CNN once and reuses it across overlapping windows and SSTS views: the
    predictions equal running every clip through the whole network, with a fraction of the CNN passes."""
    from trainables.data.augment import build_eval_transform
    from trainables.models import create_backbone

    assert build_eval_transform({}).per_frame
    torch.manual_seed(0)
    model = create_backbone("cnn_rnn_tiny", out_dims=2).eval()
    model.encoder = CountingEncoder(model.encoder)
    spec = ClipSpec(length=32, overlap=0.75, clip_len=24, stride=stride, target=target)
    for transform in (None, build_eval_transform({}), MirrorFrames()):
        reference = WholeClipsOnly(model)
        expected = predict_timeline(reference, videos[0], spec, CPU, seed=3, transform=transform)
        model.encoder.frames = 0
        shared = predict_timeline(model, videos[0], spec, CPU, seed=3, transform=transform)
        np.testing.assert_allclose(shared, expected, rtol=0, atol=1e-5)
        assert model.encoder.frames <= T < reference.clip_frames / 2  # each grid frame at most once


def test_a_transform_not_declared_per_frame_keeps_whole_clips(videos):
    from trainables.models import create_backbone

    model = create_backbone("cnn_rnn_tiny", out_dims=2).eval()
    model.encoder = CountingEncoder(model.encoder)
    spec = ClipSpec(length=32, overlap=0.75, clip_len=24, stride=2)
    predict_timeline(model, videos[0], spec, CPU, transform=lambda clip: clip.flip(0))  # depends on frame order
    assert model.encoder.frames > T


# ---------------------------------------------------------------------------
# Strided consecutive clips and the 2-clip evaluation (paper 002)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames, step, clips, valid, views", [
    (4, 1, 1, 10, [[3, 4, 5, 6]]),                      # the centred run
    (4, 2, 1, 10, [[1, 3, 5, 7]]),                      # spans 7 of 10 valid frames, centred
    (4, 2, 2, 10, [[0, 2, 4, 6], [3, 5, 7, 9]]),        # first at the start, last ending at the last frame
    (3, 4, 2, 9, [[0, 4, 8], [0, 4, 8]]),               # the span is the whole window: both clips coincide
    (2, 3, 3, 10, [[0, 3], [3, 6], [6, 9]]),
])
def test_consecutive_views_with_frame_step_and_eval_clips(num_frames, step, clips, valid, views):
    spec = ClipSpec(length=16, sampler="consecutive", num_frames=num_frames, frame_step=step, eval_clips=clips)
    assert spec.needed == (num_frames - 1) * step + 1
    assert [list(v) for v in spec.views(valid, np.random.default_rng(0))] == views


def test_strided_consecutive_training_draws_keep_the_step_inside_the_window():
    spec = ClipSpec(length=64, sampler="consecutive", num_frames=16, frame_step=4)
    rng = np.random.default_rng(0)
    for valid in (61, 64, 80):
        for _ in range(20):
            idx = spec.sample(valid, rng)
            assert len(idx) == 16 and set(np.diff(idx)) == {4} and 0 <= idx[0] and idx[-1] < valid


def test_a_window_shorter_than_the_strided_span_is_refused():
    with pytest.raises(ConfigError, match=r"window_length=32 is shorter than num_frames=16 at frame_step=4; the "
                                          r"consecutive sampler spans 61 frames"):
        TrialConfig.from_dict({"sampler": "consecutive", "num_frames": 16, "frame_step": 4, "window_length": 32})
