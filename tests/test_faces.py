"""Face detectors (OpenCV Haar on a real photograph, face_alignment with locally written random weights), main-face
choice, box smoothing, weight look-up and pre-cropped folders. Nothing here touches the network."""
from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainables.prepare import faces
from trainables.prepare.faces import (Detection, DetectorUnavailableError, MissingWeightsError, create_detector,
                                      fetch_weights, haar_score, landmarks68_to_5, list_detectors, pick_main_face,
                                      read_crops_folder, register_detector, resolve_weights, smooth_boxes, weight_files,
                                      weight_folders)
from trainables.prepare.faces import base as faces_base
from trainables.prepare.registration import coarse_crop
from trainables.prepare.sidecar import LabelFileError

FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"


# ---------------------------------------------------------------------------
# A real video: the astronaut photograph sliding over a canvas
# ---------------------------------------------------------------------------

PHOTO_SIDE = 256                      # skimage.data.astronaut() (512x512) resized to this
# Where the face is in the 512x512 photograph, measured once (Haar box 177..272 x 66..161) and widened generously.
FACE_REGION_512 = (170, 55, 280, 170)  # x1, y1, x2, y2
CANVAS_W, CANVAS_H, FRAMES = 480, 360, 20


def _offset(t: int) -> tuple[int, int]:
    """Top-left corner of the photograph on the canvas at frame t (it moves right and down)."""
    return 20 + 6 * t, 10 + 3 * t


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory) -> np.ndarray:
    """20 frames written as an mp4 (mp4v) with OpenCV and decoded back with decord: (T, H, W, 3) uint8 RGB."""
    import decord
    from skimage.data import astronaut

    photo = cv2.resize(astronaut(), (PHOTO_SIDE, PHOTO_SIDE), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (CANVAS_W, CANVAS_H))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for t in range(FRAMES):
        canvas = np.full((CANVAS_H, CANVAS_W, 3), 90, dtype=np.uint8)
        x0, y0 = _offset(t)
        canvas[y0:y0 + PHOTO_SIDE, x0:x0 + PHOTO_SIDE] = photo
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    writer.release()
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert frames.shape == (FRAMES, CANVAS_H, CANVAS_W, 3)
    return frames


def _face_region(t: int) -> np.ndarray:
    k = PHOTO_SIDE / 512
    x0, y0 = _offset(t)
    x1, y1, x2, y2 = FACE_REGION_512
    return np.array([x1 * k + x0, y1 * k + y0, x2 * k + x0, y2 * k + y0])


def test_opencv_finds_the_face_on_every_frame_of_a_real_video(astronaut_video):
    det = create_detector("opencv")
    assert det.name == "opencv" and det.gives_landmarks is False
    found = det.detect(astronaut_video)
    assert len(found) == FRAMES
    previous = None
    for t, dets in enumerate(found):
        main = pick_main_face(dets, previous)
        assert main is not None, f"no face on frame {t}"
        assert main.score >= 0.8, f"frame {t}: score {main.score:.3f}"
        assert main.landmarks5 is None and main.box.shape == (4,)
        cx, cy = (main.box[0] + main.box[2]) / 2, (main.box[1] + main.box[3]) / 2
        rx1, ry1, rx2, ry2 = _face_region(t)
        assert rx1 <= cx <= rx2 and ry1 <= cy <= ry2, f"frame {t}: box {main.box} is not on the face"
        assert 30 <= main.box[2] - main.box[0] <= 90  # a face-sized box (the face is ~50 px wide here)
        previous = main.box


def test_coarse_crop_of_the_detected_box_contains_the_face(astronaut_video):
    det = create_detector("opencv")
    for t in (0, 9, 19):
        main = pick_main_face(det.detect(astronaut_video[t:t + 1])[0], None)
        crop = coarse_crop(astronaut_video[t], main.box, 160, margin=0.15)
        again = pick_main_face(det.detect(crop[None])[0], None)
        assert again is not None and again.score >= 0.8, f"frame {t}: no face in the crop"
        cx, cy = (again.box[0] + again.box[2]) / 2, (again.box[1] + again.box[3]) / 2
        assert abs(cx - 80) < 16 and abs(cy - 80) < 16
        assert again.box[2] - again.box[0] > 80  # the face fills most of the crop


def test_haar_score_is_monotone_and_calibrated():
    w = np.linspace(-5, 10, 200)
    s = haar_score(w)
    assert np.all(np.diff(s) > 0) and s.min() > 0 and s.max() < 1
    assert haar_score(1.0) == pytest.approx(0.5)
    assert haar_score(1.0 + np.log(4)) == pytest.approx(0.8)
    assert haar_score(5.8) > 0.99  # a typical clear frontal face


def test_opencv_without_cascades_says_to_install_opencv_below_5(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(DetectorUnavailableError, match=r"opencv-python<5"):
        create_detector("opencv")


def test_detect_rejects_frames_without_batch_axis():
    det = create_detector("opencv")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        det.detect(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        det.detect(np.zeros((1, 64, 64, 3), dtype=np.float32))
    assert det.detect(np.zeros((2, 64, 64, 3), dtype=np.uint8)) == [[], []]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

def test_registry_lists_creates_and_rejects(monkeypatch):
    assert {"opencv", "face_alignment"} <= set(list_detectors())
    with pytest.raises(ValueError, match="valid face detectors: .*face_alignment.*opencv"):
        create_detector("mtcnn")
    with pytest.raises(ValueError, match="read_crops_folder"):
        create_detector("precomputed")

    monkeypatch.setattr(faces_base._DETECTORS, "entries", dict(faces_base._DETECTORS.entries))

    @register_detector("constant")
    class Constant:
        name = "constant"
        gives_landmarks = False

        def __init__(self, score: float = 0.9) -> None:
            self.score = score

        def detect(self, frames):
            return [[Detection(np.array([0, 0, 10, 10], np.float32), self.score)] for _ in frames]

    det = create_detector("constant", score=0.7)
    assert isinstance(det, faces.FaceDetector)
    assert det.detect(np.zeros((3, 8, 8, 3), np.uint8))[2][0].score == 0.7
    with pytest.raises(ValueError, match="already registered"):
        register_detector("constant")(type("Other", (), {}))


# ---------------------------------------------------------------------------
# Main face and smoothing
# ---------------------------------------------------------------------------

def _det(score: float, cx: float, cy: float = 50.0) -> Detection:
    return Detection(np.array([cx - 10, cy - 10, cx + 10, cy + 10], np.float32), score)


@pytest.mark.parametrize("dets, previous, expected", [
    ([], None, None),
    ([(0.9, 50)], None, 0),
    ([(0.7, 50), (0.95, 200)], None, 1),                       # highest score
    ([(0.95, 50), (0.93, 200)], [190, 40, 210, 60], 1),        # near-tie: the one near the previous box
    ([(0.93, 50), (0.95, 200)], [40, 40, 60, 60], 0),
    ([(0.95, 50), (0.70, 200)], [190, 40, 210, 60], 0),        # not a tie: score wins over position
    ([(0.95, 50), (0.93, 200)], [np.nan] * 4, 0),              # unusable previous box
    ([(0.9, 50), (0.9, 200)], None, 0),                        # exact tie, no history: the first
])
def test_pick_main_face(dets, previous, expected):
    objs = [_det(s, cx) for s, cx in dets]
    got = pick_main_face(objs, None if previous is None else np.array(previous, float))
    assert (got is None) if expected is None else (got is objs[expected])


def test_smooth_boxes_table():
    col = np.array([0.0, 1.0, 2.0, np.nan, 4.0, 5.0, 9.0])
    boxes = np.repeat(col[:, None], 4, axis=1)
    # radius 1: mean over valid rows among t-1..t+1; edges and the gap use what exists; NaN stays NaN.
    expected = np.array([0.5, 1.0, 1.5, np.nan, 4.5, 6.0, 7.0])
    np.testing.assert_allclose(smooth_boxes(boxes, radius=1)[:, 0], expected)
    np.testing.assert_allclose(smooth_boxes(boxes, radius=1)[:, 3], expected)
    np.testing.assert_allclose(smooth_boxes(boxes, radius=0), boxes)
    assert np.isnan(smooth_boxes(np.full((3, 4), np.nan))).all()


def test_smooth_boxes_pulls_a_jittered_box_toward_the_constant():
    rng = np.random.default_rng(0)
    const = np.array([100.0, 80.0, 180.0, 170.0])
    boxes = const + rng.uniform(-3, 3, size=(60, 4))
    boxes[[10, 11, 30]] = np.nan
    out = smooth_boxes(boxes, radius=2)
    valid = np.isfinite(boxes).all(axis=1)
    assert np.array_equal(np.isfinite(out).all(axis=1), valid)
    raw_err = np.abs(boxes[valid] - const).mean()
    assert np.abs(out[valid] - const).mean() < 0.6 * raw_err
    assert np.allclose(smooth_boxes(np.tile(const, (5, 1))), const)  # a still box is unchanged


def test_smooth_boxes_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        smooth_boxes(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="radius"):
        smooth_boxes(np.zeros((5, 4)), radius=-1)


def test_landmarks68_to_5():
    lm = np.zeros((68, 2))
    lm[36:42] = [10, 20]
    lm[36] = [4, 20]      # eye mean x = (4 + 5 * 10) / 6 = 9
    lm[42:48] = [30, 21]
    lm[30] = [20, 30]
    lm[48] = [12, 40]
    lm[54] = [28, 41]
    np.testing.assert_allclose(landmarks68_to_5(lm), [[9, 20], [30, 21], [20, 30], [12, 40], [28, 41]])
    with pytest.raises(ValueError, match="68"):
        landmarks68_to_5(np.zeros((5, 2)))


# ---------------------------------------------------------------------------
# face_alignment: weight files, offline look-up, fetching (never for real)
# ---------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Refuse every way of reaching the network, point the torch hub cache at an empty folder and unset
    $EMOTUNE_FACE_WEIGHTS; returns the list of refused attempts."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise AssertionError(f"network access attempted: {args[:2]}")

    import face_alignment.utils as fa_utils

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(fa_utils, "download_url_to_file", refuse)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(faces.WEIGHTS_ENV, raising=False)
    return attempts


def test_weight_file_names_and_urls():
    expected = {
        ("sfd", False): [FAN_FILE, S3FD_FILE],
        ("blazeface", False): [FAN_FILE, "blazeface.pth", "anchors.npy"],
        ("blazeface", True): [FAN_FILE, "blazefaceback.pth", "anchorsback.npy"],
        ("retinaface", False): [FAN_FILE, "retinaface_mobilenet0.25.pth"],
        ("yunet", False): [FAN_FILE, "face_detection_yunet_2023mar.onnx"],
        ("scrfd", False): [FAN_FILE, "scrfd_2.5g_bnkps.onnx"],
    }
    for (det, back), names in expected.items():
        files = weight_files(det, back_model=back)
        assert [f.name for f in files] == names
        assert all(f.url.startswith("https://") for f in files)
    assert weight_files("sfd")[1].url.endswith("/" + S3FD_FILE)
    with pytest.raises(ValueError, match="valid: sfd, blazeface"):
        weight_files("dlib")


def test_fetch_weights_dry_run_downloads_nothing(no_network, tmp_path):
    dest = tmp_path / "weights"
    paths = fetch_weights(dest, "sfd", dry_run=True)
    assert paths == [dest / FAN_FILE, dest / S3FD_FILE]
    assert not dest.exists() and no_network == []
    assert [p.name for p in fetch_weights(dest, "blazeface", dry_run=True)] == [FAN_FILE, "blazeface.pth", "anchors.npy"]


def test_fetch_weights_writes_each_file_once(monkeypatch, tmp_path):
    calls: list[str] = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    paths = fetch_weights(tmp_path / "w", "sfd", progress=False)
    assert [p.name for p in paths] == [FAN_FILE, S3FD_FILE] and all(p.read_bytes() == b"weights" for p in paths)
    assert calls == [f.url for f in weight_files("sfd")]
    fetch_weights(tmp_path / "w", "sfd", progress=False)
    assert len(calls) == 2  # present files are not fetched again
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted([FAN_FILE, S3FD_FILE])  # no .part left

    def broken(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(b"half")
        raise OSError("connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken)
    with pytest.raises(OSError, match="connection reset"):
        fetch_weights(tmp_path / "w2", "sfd", progress=False)
    assert list((tmp_path / "w2").iterdir()) == []  # a failed download leaves nothing under any name


def test_missing_weights_lists_every_file_and_folder(no_network, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError) as info:
        create_detector("face_alignment", weights_dir=empty, device="cpu")
    err = info.value
    assert err.missing == [FAN_FILE, S3FD_FILE]
    msg = str(err)
    for text in (FAN_FILE, S3FD_FILE, str(empty), str(tmp_path / "hub" / "checkpoints"), "fetch-weights --to DIR",
                 faces.WEIGHTS_ENV):
        assert text in msg
    assert isinstance(err, FileNotFoundError)

    (empty / FAN_FILE).write_bytes(b"x")
    with pytest.raises(MissingWeightsError) as info:
        create_detector("face_alignment", face_detector="blazeface", weights_dir=empty, device="cpu")
    assert info.value.missing == ["blazeface.pth", "anchors.npy"]
    assert no_network == []


def test_weight_lookup_order(no_network, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    hub = tmp_path / "hub" / "checkpoints"
    for d in (a, b, hub):
        d.mkdir(parents=True)
    monkeypatch.setenv(faces.WEIGHTS_ENV, str(b))
    assert weight_folders(a) == [a, b, hub]
    (hub / FAN_FILE).write_bytes(b"x")
    (hub / S3FD_FILE).write_bytes(b"x")
    (b / S3FD_FILE).write_bytes(b"x")
    found = resolve_weights("sfd", weights_dir=a)
    assert found == {FAN_FILE: hub / FAN_FILE, S3FD_FILE: b / S3FD_FILE}  # first folder holding the file wins


# ---------------------------------------------------------------------------
# face_alignment with randomly initialised weights, loaded by the real code
# ---------------------------------------------------------------------------

S3FD_FACE_PROB = float(1 / (1 + np.exp(-5.0)))  # softmax([0, 5])[1]


@pytest.fixture(scope="module")
def fa_weights(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A folder with the two files face_alignment loads for sfd, in the package's own formats (state dicts read by
    ``torch.load(..., weights_only=True)``): a randomly initialised FAN, and a random S3FD whose classification heads
    are set so that only the stride-16 head fires, with zero box regression. The detector then deterministically
    returns its 64-pixel anchors with face probability softmax([0, 5]) and FAN gets real crops to run on."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = tmp_path_factory.mktemp("fa_weights")
    torch.manual_seed(0)
    fan = FAN(4)
    torch.save(fan.state_dict(), folder / FAN_FILE)
    net = s3fd()
    with torch.no_grad():
        for name in ("conv3_3_norm_mbox_conf", "conv4_3_norm_mbox_conf", "conv5_3_norm_mbox_conf", "fc7_mbox_conf",
                     "conv6_2_mbox_conf", "conv7_2_mbox_conf"):
            layer = getattr(net, name)
            layer.weight.zero_()
            layer.bias.fill_(5.0)          # background logits high ...
            layer.bias[-1] = 0.0           # ... face logit 0: probability ~0.007, below the 0.05 candidate cut
        net.conv5_3_norm_mbox_conf.bias.copy_(torch.tensor([0.0, 5.0]))  # ... except stride 16: face
        net.conv5_3_norm_mbox_loc.weight.zero_()
        net.conv5_3_norm_mbox_loc.bias.zero_()
    torch.save(net.state_dict(), folder / S3FD_FILE)
    return folder, fan.state_dict()["conv1.weight"].clone()


@pytest.fixture
def fast_fan_decoding(monkeypatch):
    """Run face_alignment's heatmap decoding (numba ``@jit`` functions) as the plain Python it is written in.

    The package's code still runs unchanged; only numba's one-off compilation (~15 s per process, longer on a busy
    machine) is skipped, which keeps this file fast. Production keeps the compiled functions."""
    import face_alignment.utils as fa_utils

    for name in ("_get_preds_fromhm", "transform_np"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name).py_func)


def test_face_alignment_detector_runs_offline_with_local_weights(fa_weights, no_network, fast_fan_decoding):
    folder, fan_conv1 = fa_weights
    det = create_detector("face_alignment", weights_dir=folder, device="cpu", max_faces=1, detect_max_side=128)
    assert det.name == "face_alignment" and det.gives_landmarks is True
    # The FAN that runs is the one from our file (not a download, not a fresh init).
    assert torch.equal(det._fa.face_alignment_net.state_dict()["conv1.weight"], fan_conv1)

    from skimage.data import astronaut

    frames = np.stack([cv2.resize(astronaut(), (256, 192)), cv2.resize(np.ascontiguousarray(astronaut()[::-1]), (256, 192))])
    out = det.detect(frames)
    assert len(out) == 2
    for dets in out:
        assert len(dets) == 1  # max_faces
        d = dets[0]
        assert isinstance(d, Detection) and d.box.shape == (4,) and d.box.dtype == np.float32
        assert d.score == pytest.approx(S3FD_FACE_PROB, abs=1e-4)
        # 64-px anchors found on the frame downscaled to 128 px wide, mapped back to the 256-px frame.
        np.testing.assert_allclose(d.box[2:] - d.box[:2], [128, 128], atol=1e-3)
        assert d.landmarks5.shape == (5, 2) and d.landmarks5.dtype == np.float32
        assert np.isfinite(d.landmarks5).all()
        lo, hi = d.box[:2] - 128, d.box[2:] + 128  # random FAN: anywhere in its crop around the box
        assert (d.landmarks5 >= lo).all() and (d.landmarks5 <= hi).all()
    assert no_network == []


def test_face_alignment_weights_from_env_and_tiny_frames(fa_weights, no_network, fast_fan_decoding, monkeypatch):
    folder, _ = fa_weights
    monkeypatch.setenv(faces.WEIGHTS_ENV, str(folder))
    det = create_detector("face_alignment", device="cpu", detect_max_side=None, max_faces=1)
    # 16 px is below S3FD's minimum input (32 px): the frame is padded, and boxes centred in the padding are dropped.
    out = det.detect(np.zeros((1, 16, 24, 3), dtype=np.uint8))
    assert len(out) == 1
    for dets in out:
        for d in dets:
            cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
            assert 0 <= cx < 24 and 0 <= cy < 16
    assert no_network == []


# ---------------------------------------------------------------------------
# Pre-cropped folders (Aff-Wild2 cropped_aligned)
# ---------------------------------------------------------------------------

def _write(path: Path, value: int, size=(112, 112)) -> np.ndarray:
    img = np.full((*size, 3), value, dtype=np.uint8)
    img[..., 0] = 255 - value  # make RGB/BGR order observable
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return img


def test_read_crops_folder_with_gaps(tmp_path):
    imgs = {i: _write(tmp_path / f"{i:05d}.png", 10 * i) for i in (1, 2, 4)}
    (tmp_path / ".DS_Store").write_bytes(b"")
    frames, valid = read_crops_folder(tmp_path)
    assert frames.shape == (4, 112, 112, 3) and frames.dtype == np.uint8
    assert valid.tolist() == [True, True, False, True]
    for i, img in imgs.items():
        np.testing.assert_array_equal(frames[i - 1], img)
    assert frames[2].max() == 0
    frames, valid = read_crops_folder(tmp_path, num_frames=6)
    assert frames.shape[0] == 6 and valid.tolist() == [True, True, False, True, False, False]


@pytest.mark.parametrize("names, match", [
    (["00001.jpg", "frame2.jpg"], "'frame2.jpg' is not named by frame number"),
    (["00000.jpg"], "frame number 0"),
    (["00001.jpg", "1.png"], "both frame 1"),
    ([], "contains no frame images"),
    (["notes.txt"], "not named by frame number"),
])
def test_read_crops_folder_rejects_bad_folders(tmp_path, names, match):
    for n in names:
        _write(tmp_path / n, 50) if not n.endswith(".txt") else (tmp_path / n).write_text("x")
    with pytest.raises(ValueError, match=match) as info:
        read_crops_folder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_read_crops_folder_size_mismatch_missing_folder_and_short_video(tmp_path):
    _write(tmp_path / "00001.jpg", 10)
    _write(tmp_path / "00002.jpg", 10, size=(96, 96))
    with pytest.raises(ValueError, match="one size"):
        read_crops_folder(tmp_path)
    with pytest.raises(LabelFileError, match="does not exist"):  # a user error, like every bad face source
        read_crops_folder(tmp_path / "nope")
    (tmp_path / "00002.jpg").unlink()
    _write(tmp_path / "00009.jpg", 10)
    with pytest.raises(ValueError, match="frame 9 but the video has 5 frames"):
        read_crops_folder(tmp_path, num_frames=5)
