"""Coarse crops and fine (5-point similarity) alignment."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from trainables.prepare.registration import (CANONICAL_TEMPLATE_112, TEMPLATE_5PTS, apply_transform, coarse_crop,
                                             crop_region, fine_align, similarity_from_points)


def _random_similarity(rng: np.random.Generator) -> np.ndarray:
    """A 2x3 similarity: rotation +-30 degrees, scale 0.7..1.3 (times the template-to-frame zoom), translation."""
    ang = np.deg2rad(rng.uniform(-30, 30))
    s = rng.uniform(0.7, 1.3) * 2.5  # the face in the frame is bigger than in a 112 crop
    tx, ty = rng.uniform(200, 300, size=2)  # with _dots_image's 720x720 canvas every point stays inside
    return np.array([[s * np.cos(ang), -s * np.sin(ang), tx], [s * np.sin(ang), s * np.cos(ang), ty]])


# ---------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [96, 112, 160, 224, 384])
def test_template_is_symmetric_with_horizontal_eyes(size):
    t = TEMPLATE_5PTS(size)
    assert t.shape == (5, 2)
    assert t[0, 1] == pytest.approx(t[1, 1]) and t[3, 1] == pytest.approx(t[4, 1])  # eyes, mouth horizontal
    assert t[0, 0] + t[1, 0] == pytest.approx(size - 1)  # symmetric about the crop's centre column
    assert t[2, 0] == pytest.approx((size - 1) / 2)
    assert (t > 0).all() and (t < size - 1).all()
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth


def test_template_112_is_the_canonical_one_and_scales_like_a_resize():
    np.testing.assert_allclose(TEMPLATE_5PTS(112), CANONICAL_TEMPLATE_112)
    np.testing.assert_allclose(TEMPLATE_5PTS(224), (CANONICAL_TEMPLATE_112 + 0.5) * 2 - 0.5)


def test_template_non_square_fits_the_short_side_and_is_centred():
    t = TEMPLATE_5PTS((100, 80))
    np.testing.assert_allclose(t - [0, 10], TEMPLATE_5PTS(80))
    assert t[0, 0] + t[1, 0] == pytest.approx(79)


# ---------------------------------------------------------------------------
# Similarity estimation
# ---------------------------------------------------------------------------

def test_similarity_recovers_random_transforms_of_the_template():
    rng = np.random.default_rng(0)
    template = TEMPLATE_5PTS(112)
    for _ in range(200):
        m = _random_similarity(rng)
        src = apply_transform(m, template)
        back = similarity_from_points(src, template)
        assert np.abs(apply_transform(back, src) - template).max() < 1.0
        # Exact data: the recovered transform is the inverse to numerical precision.
        full = np.vstack([m, [0, 0, 1]])
        np.testing.assert_allclose(np.vstack([back, [0, 0, 1]]) @ full, np.eye(3), atol=1e-9)


def test_similarity_is_least_squares_with_noisy_points():
    rng = np.random.default_rng(1)
    template = TEMPLATE_5PTS(112)
    m = _random_similarity(rng)
    src = apply_transform(m, template) + rng.normal(0, 1.0, size=(5, 2))
    back = similarity_from_points(src, template)
    resid = np.abs(apply_transform(back, src) - template)
    assert resid.max() < 2.0
    # Least squares: no nearby similarity does better (perturb each of the 4 parameters).
    base = np.sum((apply_transform(back, src) - template) ** 2)
    for k, (i, j) in enumerate([(0, 0), (1, 0), (0, 2), (1, 2)]):
        for eps in (-1e-3, 1e-3):
            p = back.copy()
            p[i, j] += eps
            if (i, j) == (0, 0):
                p[1, 1] += eps
            if (i, j) == (1, 0):
                p[0, 1] -= eps
            assert np.sum((apply_transform(p, src) - template) ** 2) >= base


def test_similarity_has_no_reflection_and_agrees_with_skimage():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, size=(5, 2))
    dst = rng.uniform(0, 100, size=(5, 2))
    m = similarity_from_points(src, dst)
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])
    # scikit-image's Umeyama estimate of the same least-squares problem.
    if hasattr(SimilarityTransform, "from_estimate"):
        ref = SimilarityTransform.from_estimate(src, dst)
    else:
        ref = SimilarityTransform()
        ref.estimate(src, dst)
    np.testing.assert_allclose(m, ref.params[:2], atol=1e-9)


@pytest.mark.parametrize("src, dst", [
    (np.zeros((5, 2)), np.zeros((5, 2))),            # all points coincide
    (np.ones((1, 2)), np.ones((1, 2))),              # one point
    (np.ones((5, 2)), np.ones((4, 2))),              # shapes differ
    (np.full((5, 2), np.nan), np.zeros((5, 2))),     # NaN landmarks (no face)
])
def test_similarity_rejects_degenerate_input(src, dst):
    with pytest.raises(ValueError, match="similarity_from_points"):
        similarity_from_points(src, dst)


# ---------------------------------------------------------------------------
# Fine alignment (warping)
# ---------------------------------------------------------------------------

def _dots_image(points: np.ndarray, shape=(720, 720)) -> np.ndarray:
    img = np.zeros((*shape, 3), dtype=np.uint8)
    for x, y in points:
        # Anti-aliased sub-pixel disc (shift=4: 1/16 px) so the dot's centroid is the point itself.
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 5 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    return img


def _centroid(img: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    x0, y0 = (int(round(v)) for v in near)
    ys, xs = np.mgrid[max(0, y0 - radius):y0 + radius + 1, max(0, x0 - radius):x0 + radius + 1]
    w = g[ys, xs]
    assert w.sum() > 0, f"no dot near {near}"
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


@pytest.mark.parametrize("size", [112, 224])
def test_fine_align_puts_dots_on_the_template(size):
    rng = np.random.default_rng(3)
    template = TEMPLATE_5PTS(size)
    for _ in range(6):
        m = _random_similarity(rng)
        src = apply_transform(m, TEMPLATE_5PTS(112))
        out = fine_align(_dots_image(src), src, size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        radius = max(4, size // 20)
        found = np.array([_centroid(out, p, radius) for p in template])
        assert np.abs(found - template).max() < 1.5
        # Eyes horizontal after alignment.
        assert abs(found[0, 1] - found[1, 1]) < 1.0


def test_fine_align_large_shrink_goes_through_the_area_reduction():
    # Face 8x larger than the output: the pre-reduction branch must keep the dots where they belong.
    big = apply_transform(np.array([[8.0, 0, 100], [0, 8.0, 50]]), TEMPLATE_5PTS(112))
    img = np.zeros((1100, 1100, 3), dtype=np.uint8)
    for x, y in big:
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 40 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    out = fine_align(img, big, 112)
    found = np.array([_centroid(out, p, 6) for p in TEMPLATE_5PTS(112)])
    assert np.abs(found - TEMPLATE_5PTS(112)).max() < 1.0


def test_fine_align_rotated_face_becomes_upright():
    # A tilted bar through the eyes becomes a horizontal bar.
    rng = np.random.default_rng(4)
    m = _random_similarity(rng)
    src = apply_transform(m, TEMPLATE_5PTS(112))
    img = np.zeros((720, 720, 3), dtype=np.uint8)
    cv2.line(img, tuple(int(v) for v in src[0]), tuple(int(v) for v in src[1]), (255, 255, 255), 3)
    out = fine_align(img, src, 112)[..., 0]
    ys, xs = np.nonzero(out > 128)
    slope = np.polyfit(xs, ys, 1)[0]
    assert abs(slope) < 0.05
    assert abs(ys.mean() - TEMPLATE_5PTS(112)[0, 1]) < 1.5


def test_fine_align_grayscale_non_square_and_black_border():
    src = apply_transform(np.array([[1.0, 0, -40], [0, 1.0, -40]]), TEMPLATE_5PTS(112))  # face half off the frame
    frame = np.full((120, 160, 3), 200, dtype=np.uint8)
    out = fine_align(frame, src, (100, 80), grayscale=True)
    assert out.shape == (100, 80, 1) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 200  # outside the frame is black


def test_fine_align_rejects_bad_landmarks():
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="landmarks5"):
        fine_align(frame, np.zeros((68, 2)), 112)
    with pytest.raises(ValueError, match="finite"):
        fine_align(frame, np.full((5, 2), np.nan), 112)
    with pytest.raises(ValueError, match="uint8"):
        fine_align(frame.astype(np.float32), TEMPLATE_5PTS(112), 112)


# ---------------------------------------------------------------------------
# Coarse crops
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [96, (100, 80), 112, 160, 224, 384])
def test_coarse_crop_sizes_and_content(size):
    frame = np.zeros((300, 400, 3), dtype=np.uint8)
    frame[100:200, 150:250] = (255, 0, 0)  # the "face": a red square
    out = coarse_crop(frame, np.array([150, 100, 250, 200]), size, margin=0.15)
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    red = out[..., 0] > 127
    ys, xs = np.nonzero(red)
    # The box is centred and the margin (15% of the box per side, on the limiting dimension) is black.
    assert abs(xs.mean() - (w - 1) / 2) < 1.0 and abs(ys.mean() - (h - 1) / 2) < 1.0
    side = min(h, w)
    assert red.sum(axis=1).max() == pytest.approx(side / 1.3, abs=2)


@pytest.mark.parametrize("box, expected", [
    ([10.3, 20.7, 80.2, 95.9], (-4, 9, 94, 107)),  # side = 75.2 * 1.3 = 97.76 around centre (45.25, 58.3)
    ([0, 0, 33, 17], (-5, -13, 38, 30)),            # the longer side sets the square: 33 * 1.3 = 42.9
    ([-5, 40, 60, 90], (-15, 23, 70, 107)),         # may extend beyond the frame
])
def test_crop_region_square_rule(box, expected):
    # Square output: a square of side max(w, h) * (1 + 2 * margin) centred on the box, in integer pixels.
    assert crop_region(np.array(box), 64, 0.15) == expected


def test_coarse_crop_pads_black_outside_the_frame_and_grayscale():
    frame = np.full((100, 100, 3), 255, dtype=np.uint8)
    out = coarse_crop(frame, np.array([-20, -20, 30, 30]), 96, margin=0.0)
    assert out[:30, :30].max() == 0 and out[-10:, -10:].min() == 255  # top-left outside, bottom-right inside
    gray = coarse_crop(frame, np.array([35, 30, 65, 70]), (100, 80), grayscale=True)
    assert gray.shape == (100, 80, 1) and gray.min() == 255
    # A box entirely outside the frame gives a black crop rather than an error.
    assert coarse_crop(frame, np.array([300, 300, 340, 340]), 32).max() == 0



def test_coarse_crop_inside_the_frame_is_the_region_resized_and_outside_it_the_padded_region():
    import cv2

    rng = np.random.default_rng(4)
    frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for box in ([40, 30, 90, 80], [110, 30, 150, 70], [120, 60, 170, 110]):  # inside, touching the edge, across it
        x1, y1, x2, y2 = crop_region(np.array(box), 64, 0.15)
        padded = np.zeros((240, 320, 3), np.uint8)
        padded[60:180, 80:240] = frame
        expected = cv2.resize(padded[y1 + 60:y2 + 60, x1 + 80:x2 + 80].copy(), (64, 64), interpolation=cv2.INTER_AREA)
        assert np.array_equal(coarse_crop(frame, np.array(box), 64), expected), box

@pytest.mark.parametrize("box, size, match", [
    ([10, 10, 5, 20], 96, "box"),
    ([np.nan, 0, 10, 10], 96, "box"),
    ([0, 0, 10, 10], 0, "size"),
    ([0, 0, 10, 10], (96,), "size"),
])
def test_coarse_crop_rejects_bad_arguments(box, size, match):
    with pytest.raises(ValueError, match=match):
        coarse_crop(np.zeros((50, 50, 3), dtype=np.uint8), np.array(box, dtype=float), size)
