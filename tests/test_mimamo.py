"""Tests for MIMAMO Net (paper 004): the complex steerable pyramid, phase differences, the backbone and the Aff-Wild2
evaluation rules."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from trainables.models import backbone_arguments, create_backbone
from trainables.models.mimamo import Mimamo
from trainables.config import TrialConfig
from trainables.models.steerable_pyramid import (ComplexSteerablePyramid, authors_unwrap_step, phase_difference,
                                                 symmetric_extension, to_grayscale, wrap_phase)
from trainables.objectives.affwild2 import fill_faceless, scored_mask

B, T, C, H, W = 2, 6, 3, 32, 32
N = 64  # texture size for the pyramid tests


# --- steerable pyramid ----------------------------------------------------------------------------------------------

def _texture(seed: int = 0) -> torch.Tensor:
    """Spectrum of a smooth random texture (white noise low-passed by a Gaussian), N x N."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(N, N, generator=gen, dtype=torch.float64)
    f = torch.fft.fftfreq(N, dtype=torch.float64)
    return torch.fft.fft2(noise) * torch.exp(-(f.view(-1, 1) ** 2 + f.view(1, -1) ** 2) / (2 * 0.15 ** 2))


def _shift(spectrum: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """The texture translated by (dx, dy) pixels (Fourier shift theorem: exact, circular)."""
    f = torch.fft.fftfreq(N, dtype=torch.float64)
    ramp = torch.exp(-2j * math.pi * (f.view(1, -1) * dx + f.view(-1, 1) * dy))
    return torch.fft.ifft2(spectrum * ramp).real


def _weighted_mean_abs_diff(pyr: ComplexSteerablePyramid, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """Per level, (orientations,) amplitude-weighted mean |phase difference| between images a and b."""
    frames = torch.stack([a, b]).view(1, 2, 1, N, N)
    coeffs = pyr(frames.view(2, 1, N, N))
    out = []
    for c, d in zip(coeffs, phase_difference(pyr, frames)):
        weight = (c[0].abs() * c[1].abs()).sqrt()
        out.append((weight * d[0, 1].abs()).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)))
    return out


@pytest.mark.parametrize("orientations", [2, 4])
def test_phase_difference_grows_with_translation(orientations: int) -> None:
    pyr = ComplexSteerablePyramid(height=3, orientations=orientations)
    spectrum = _texture()
    angle = math.radians(20)  # a direction no band is aligned or orthogonal to
    ds = (0.0, 0.5, 1.0, 2.0)
    per_d = [_weighted_mean_abs_diff(pyr, _shift(spectrum, 0, 0), _shift(spectrum, d * math.cos(angle),
                                                                          d * math.sin(angle))) for d in ds]
    for level in range(3):
        m = torch.stack([per_d[i][level] for i in range(len(ds))])  # (len(ds), orientations)
        assert m[0].abs().max() < 1e-9, "no motion, no phase change"
        wavelength = 4 * 2 ** level  # peak wavelength of the level, in pixels
        # Strictly increasing in d for every orientation, over the shifts below half the band's wavelength.
        valid = [i for i, d in enumerate(ds) if d < wavelength / 2]
        steps = m[valid[1:]] - m[valid[:-1]]
        assert (steps > 0.01).all(), f"level {level}: {m.tolist()}"
    # Coarser levels see a smaller phase change for the same shift (longer wavelength).
    assert (per_d[2][0] > per_d[2][1]).all() and (per_d[2][1] > per_d[2][2]).all()


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (0, 2), (2, 1)])
def test_integer_roll_matches_fourier_shift(dx: int, dy: int) -> None:
    pyr = ComplexSteerablePyramid(height=2, orientations=4)
    image = _shift(_texture(1), 0, 0)
    rolled = torch.roll(image, shifts=(dy, dx), dims=(0, 1))
    torch.testing.assert_close(rolled, _shift(_texture(1), dx, dy), rtol=0, atol=1e-9)
    for a, b in zip(_weighted_mean_abs_diff(pyr, image, rolled),
                    _weighted_mean_abs_diff(pyr, image, _shift(_texture(1), dx, dy))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert (a > 0.05).all()


def test_phase_difference_of_a_grating_is_two_pi_f_d() -> None:
    """A horizontal grating of wavelength 8 px moved by 1 px: the band facing it turns its phase by 2*pi/8 everywhere.

    Without the symmetric extension: the grating is periodic on the 64 px frame, the case the FFT's wrap-around handles
    exactly. (Mirrored, the copy moves the other way, and bins within a wavelength of a border see both motions.)"""
    x = torch.arange(N, dtype=torch.float64)
    grating = torch.cos(2 * math.pi * x / 8).expand(N, N)
    moved = torch.cos(2 * math.pi * (x - 1) / 8).expand(N, N)
    pyr = ComplexSteerablePyramid(height=2, orientations=4, symmetric_extension=False)
    diffs = phase_difference(pyr, torch.stack([grating, moved]).view(1, 2, 1, N, N))
    band = diffs[1][0, 1, 0]  # level 1 (peak wavelength 8 px), orientation 0 (horizontal frequencies)
    torch.testing.assert_close(band.abs(), torch.full_like(band, 2 * math.pi / 8), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("h", "w", "height", "extension", "expected"), [
    (32, 32, 2, True, [(32, 32), (16, 16)]),
    (48, 40, 3, True, [(48, 40), (24, 20), (12, 10)]),
    # the authors' crop of the extended levels rounds down: rows 66, 33, 17 -> 33, 16, 8; columns 62, 31, 16 -> 31,
    # 15, 8 (without the extension each level rounds up)
    (33, 31, 3, True, [(33, 31), (16, 15), (8, 8)]),
    (33, 31, 3, False, [(33, 31), (17, 16), (9, 8)]),
])
def test_pyramid_level_shapes_and_dtype(h: int, w: int, height: int, extension: bool, expected: list) -> None:
    pyr = ComplexSteerablePyramid(height=height, orientations=3, symmetric_extension=extension)
    levels = pyr(torch.randn(5, 1, h, w))
    assert [tuple(c.shape[-2:]) for c in levels] == pyr.level_shapes(h, w) == expected
    for c in levels:
        assert c.shape[:2] == (5, 3)
        assert c.dtype == torch.complex64
    assert pyr(torch.randn(2, 1, h, w, dtype=torch.float64))[0].dtype == torch.complex128


def test_pyramid_ignores_constant_images_and_rejects_bad_input() -> None:
    pyr = ComplexSteerablePyramid(height=2, orientations=4)
    for c in pyr(torch.full((1, 1, 16, 16), 3.0)):
        assert c.abs().max() < 1e-4  # band-pass: no DC
    with pytest.raises(ValueError, match="grayscale"):
        pyr(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        ComplexSteerablePyramid(height=4)(torch.randn(1, 1, 8, 8))  # 8, 4, 2, 1
    with pytest.raises(ValueError):
        ComplexSteerablePyramid(height=0)


def test_phase_difference_layout_wrap_and_first_frame() -> None:
    pyr = ComplexSteerablePyramid(height=2, orientations=4)
    frames = torch.randn(B, T, 3, H, W, generator=torch.Generator().manual_seed(0))
    diffs = phase_difference(pyr, frames)
    assert [tuple(d.shape) for d in diffs] == [(B, T, 4, 32, 32), (B, T, 4, 16, 16)]
    for d in diffs:
        assert (d[:, 0] == 0).all()
        # The authors' unwrap brings steps above pi down by 2*pi and keeps those below -pi: [-2*pi, pi].
        assert (d >= -2 * math.pi).all() and (d <= math.pi).all() and (d < -math.pi).any()
    # RGB goes through luma: the same as passing the grayscale frames.
    gray = phase_difference(pyr, to_grayscale(frames))
    for a, b in zip(diffs, gray):
        torch.testing.assert_close(a, b)
    assert torch.equal(wrap_phase(torch.tensor([-math.pi, math.pi, 3 * math.pi, 0.5])),
                       torch.tensor([math.pi, math.pi, math.pi, 0.5]))


# --- the authors' phase inputs ----------------------------------------------------------------------------------------

def test_authors_unwrap_step_corrects_only_steps_above_pi() -> None:
    """Their torch_unwrap with torch.fmod (truncated): a step above pi loses 2*pi, a step below -pi stays."""
    tau = 2 * math.pi
    steps = torch.tensor([-tau, -5.0, -math.pi, -1.0, 0.0, 1.0, math.pi, 4.0, tau - 0.25], dtype=torch.float64)
    expected = torch.tensor([-tau, -5.0, -math.pi, -1.0, 0.0, 1.0, math.pi, 4.0 - tau, -0.25], dtype=torch.float64)
    torch.testing.assert_close(authors_unwrap_step(steps), expected, rtol=0, atol=1e-12)


def test_symmetric_extension_mirrors_into_four_quadrants() -> None:
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    expected = torch.tensor([[1, 2, 3, 3, 2, 1], [4, 5, 6, 6, 5, 4], [4, 5, 6, 6, 5, 4], [1, 2, 3, 3, 2, 1]],
                            dtype=torch.float32)
    assert torch.equal(symmetric_extension(image.expand(2, 1, 2, 3)), expected.expand(2, 1, 4, 6))


S = 48  # the authors' phase crop


def _moving_texture(t: int = 4, velocity: tuple[float, float] = (0.6, -0.35)) -> np.ndarray:
    """(t, S, S) in [0, 1]: a smooth random texture moving by ``velocity`` px per frame, seen through a fixed S x S
    window of a larger canvas, so content enters and leaves at the borders (not a circular shift)."""
    big = 128
    f = np.fft.fftfreq(big)
    spectrum = np.fft.fft2(np.random.default_rng(0).standard_normal((big, big)))
    spectrum *= np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.12 ** 2))
    frames = []
    for k in range(t):
        ramp = np.exp(-2j * np.pi * (f[None, :] * velocity[0] * k + f[:, None] * velocity[1] * k))
        frames.append(np.fft.ifft2(spectrum * ramp).real[40:40 + S, 40:40 + S])
    frames = np.stack(frames)
    return (frames - frames.min()) / (frames.max() - frames.min())


def _reference_bands(image: np.ndarray, levels: int, nbands: int) -> list[np.ndarray]:
    """The complex steerable pyramid as the MIMAMO authors' SCFpyr builds it, in numpy (float64), for a square image
    of even side: band-pass levels (nbands, m_l, m_l), residuals left out.

    Their construction: a centred frequency grid in [-1, 1) with the DC radius replaced by its left neighbour's; radial
    masks read by linear interpolation from a table of sqrt(cos^2) / sqrt(sin^2) over one octave (first low-pass
    transition at log2 r in [-1, 0], each band-pass one octave lower); angular masks read from a 1024-per-pi table of
    ``2 sqrt(c) cos(x)**(nbands-1)`` cut to |x| < pi/2; the low-pass spectrum cropped at their index formula and
    multiplied by the next low-pass mask after every level."""
    m = image.shape[0]
    coords = (np.arange(m) - m // 2) / (m / 2)
    xx, yy = np.meshgrid(coords, coords)
    radius = np.hypot(xx, yy)
    radius[m // 2, m // 2] = radius[m // 2, m // 2 - 1]
    log_rad, angle = np.log2(radius), np.arctan2(yy, xx)
    quarter = np.pi * np.arange(-257, 2) / 512  # 259 samples of [-pi/2, 0] (256 steps) with a flat end on each side
    cos2 = np.cos(quarter) ** 2
    cos2[0], cos2[-1] = cos2[1], cos2[-2]
    knots = -0.5 + (2 / np.pi) * (quarter + np.pi / 4)  # log2 radius: -1 .. 0
    high_table, low_table = np.sqrt(cos2), np.sqrt(1 - cos2)
    lut = np.pi * np.arange(-2049, 1026) / 1024
    order = nbands - 1
    gain = 2 * np.sqrt(2.0 ** (2 * order) * math.factorial(order) ** 2 / (nbands * math.factorial(2 * order)))
    angle_table = gain * np.cos(lut) ** order * (np.abs((lut + np.pi) % (2 * np.pi) - np.pi) < np.pi / 2)
    low = np.fft.fftshift(np.fft.fft2(image)) * np.interp(log_rad, knots, low_table)
    bands = []
    for _ in range(levels):
        knots = knots - 1
        high = np.interp(log_rad, knots, high_table)
        bands.append(np.stack([np.fft.ifft2(np.fft.ifftshift(
            low * high * np.interp(angle, lut + np.pi * b / nbands, angle_table) * (-1j) ** order))
            for b in range(nbands)]))
        side = low.shape[0]
        start = int(np.ceil((side + 0.5) / 2) - np.ceil((np.ceil((side - 0.5) / 2) + 0.5) / 2))
        stop = start + int(np.ceil((side - 0.5) / 2))
        log_rad, angle = log_rad[start:stop, start:stop], angle[start:stop, start:stop]
        low = low[start:stop, start:stop] * np.interp(log_rad, knots, low_table)
    return bands


def _reference_phase_inputs(frames: np.ndarray, levels: int = 2,
                            nbands: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The authors' phase inputs of (T, S, S) frames, less their amplitude-weighted blur: per level the (T-1, nbands,
    h, w) differences and the (T, nbands, h, w) cropped coefficients.

    Each frame mirrored to 2S x 2S; the pyramid; the top-left quadrant of every level; atan2 phases; their unwrap over
    time (steps, ``fmod(step + pi, 2 pi) - pi`` with fmod truncating like torch.fmod, -pi -> pi for positive steps,
    no correction for |step| < pi, corrections summed over time); consecutive differences; each band's spatial mean
    removed; clamp to +-5 pi."""
    pyramids = []
    for frame in frames:
        top = np.concatenate([frame, frame[:, ::-1]], axis=1)
        pyramids.append(_reference_bands(np.concatenate([top, top[::-1]], axis=0), levels, nbands))
    diffs, coeffs = [], []
    for level in range(levels):
        c = np.stack([p[level] for p in pyramids])
        c = c[..., :c.shape[-2] // 2, :c.shape[-1] // 2]
        phase = np.arctan2(c.imag, c.real)
        step = np.diff(phase, axis=0)
        mod = np.fmod(step + np.pi, 2 * np.pi) - np.pi
        mod[(mod == -np.pi) & (step > 0)] = np.pi
        correction = np.where(np.abs(step) < np.pi, 0.0, mod - step)
        unwrapped = phase.copy()
        unwrapped[1:] += np.cumsum(correction, axis=0)
        d = np.diff(unwrapped, axis=0)
        diffs.append(np.clip(d - d.mean(axis=(-2, -1), keepdims=True), -5 * np.pi, 5 * np.pi))
        coeffs.append(c)
    return diffs, coeffs


@pytest.fixture(scope="module")
def texture_and_reference() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    frames = _moving_texture()
    return (frames, *_reference_phase_inputs(frames))


def _project_phase_inputs(frames: np.ndarray, **kwargs) -> tuple[Mimamo, list[np.ndarray]]:
    """The model's phase inputs of the frames from t = 1 on, as (T-1, orientations, h, w) per level."""
    model = _tiny(in_chans=1, pyramid_levels=2, pyramid_orientations=2, **kwargs).eval()
    t = frames.shape[0]
    bands = model.phase_inputs(torch.from_numpy(frames).float().view(1, t, 1, S, S))
    return model, [b.view(t, *b.shape[1:])[1:].double().numpy() for b in bands]


def _well_conditioned(coeffs: np.ndarray) -> np.ndarray:
    """Bins whose amplitude in both frames of a difference exceeds 5% of the band's largest: their phase is defined
    to float32 precision (near-zero coefficients have an arbitrary phase in either implementation)."""
    amplitude = np.abs(coeffs)
    threshold = 0.05 * amplitude.max(axis=(0, -2, -1), keepdims=True)
    return (amplitude[1:] > threshold) & (amplitude[:-1] > threshold)


def test_phase_inputs_match_the_authors_procedure_on_a_moving_texture(texture_and_reference) -> None:
    frames, reference, ref_coeffs = texture_and_reference
    model, got = _project_phase_inputs(frames)
    assert model.pyramid.symmetric_extension  # the default
    coeffs = model.pyramid(torch.from_numpy(frames).float().view(-1, 1, S, S))
    for level, (g, r, c) in enumerate(zip(got, reference, ref_coeffs)):
        assert g.shape == r.shape == (3, 2, S // 2 ** level, S // 2 ** level)
        # The pyramid itself: the same complex coefficients, to float32 precision.
        ours = coeffs[level].to(torch.complex128).numpy()
        assert np.abs(ours - c).max() < 1e-4 * np.abs(c).max()
        good = _well_conditioned(c)
        assert good.mean() > 0.9
        assert np.abs(g - r)[good].max() < 1e-3, level
        assert np.abs(g - r).max() < 1e-2  # every bin: the means agree too
        # The texture crosses the branch cut both ways: steps below -pi occur and stay (the authors' unwrap), which
        # a symmetric wrap would move by 2*pi.
        assert (r[good] < -math.pi - 0.5).mean() > 0.005
        assert (g >= -5 * math.pi).all() and (g <= 5 * math.pi).all()


def test_without_the_extension_the_borders_wrap_around(texture_and_reference) -> None:
    """The deviation the setting allows: the FFT of the frame as it is. Bins near a border then see the opposite
    border's content, so the phase inputs leave the authors' (on this texture: a median of ~0.05 rad on the
    well-conditioned bins, a quarter of them off by more than 0.1 rad), most of all within a wavelength of a border
    (the errors elsewhere come mostly through each band's mean, which the border bins shift)."""
    frames, reference, ref_coeffs = texture_and_reference
    model, got = _project_phase_inputs(frames, pyramid_extension=False)
    assert not model.pyramid.symmetric_extension
    for level, (g, r, c) in enumerate(zip(got, reference, ref_coeffs)):
        assert g.shape == r.shape
        err = np.abs(g - r)
        good = _well_conditioned(c)
        assert np.median(err[good]) > 0.02, level
        assert (err[good] > 0.1).mean() > 0.1, level
        # Every band's peak wavelength is ~4 of its own pixels; the mean's shift taken out first.
        centred = np.abs((g - r) - np.median(g - r, axis=(-2, -1), keepdims=True))
        edge = np.ones(g.shape[-2:], dtype=bool)
        edge[4:-4, 4:-4] = False
        assert np.median(centred[..., edge]) > 3 * np.median(centred[..., ~edge]), level


def test_the_extension_setting_reaches_the_model() -> None:
    for value, expected in [(None, True), (True, True), (False, False)]:
        settings = {"backbone": "mimamo_tiny"} | ({} if value is None else {"pyramid_extension": value})
        kwargs = TrialConfig.from_dict(settings).model_kwargs()
        assert create_backbone("mimamo_tiny", **kwargs).pyramid.symmetric_extension is expected


# --- the backbone ---------------------------------------------------------------------------------------------------

def _clip(c: int = C, seed: int = 0, t: int = T) -> torch.Tensor:
    return torch.randn(B, t, c, H, W, generator=torch.Generator().manual_seed(seed))


def _tiny(seed: int = 0, **kwargs) -> Mimamo:
    torch.manual_seed(seed)
    return create_backbone("mimamo_tiny", **kwargs)


def test_tiny_shapes_and_fast_train_step() -> None:
    model = _tiny().train()
    x = _clip()
    timings = []
    # CPU time of one thread: the compute a train step costs, not how busy the machine's other cores are.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            t0 = time.process_time()
            out = model(x)
            sum(v.pow(2).mean() for v in out.values()).backward()
            timings.append(time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    assert out["frames"].shape == (B, T, 2)
    assert out["window"].shape == (B, 2)
    assert min(timings) < 0.5, timings


def test_gradient_reaches_both_streams_and_the_gru() -> None:
    model = _tiny().train()
    out = model(_clip())
    out["frames"].pow(2).mean().backward()
    for name, module in [("spatial", model.spatial), ("spatial_fc", model.spatial_fc), ("temporal", model.temporal),
                         ("rnn", model.rnn), ("head", model.head)]:
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    # The first temporal conv in particular: the phase differences carry signal.
    assert model.temporal.blocks[0][0].weight.grad.abs().sum() > 0


def test_window_is_last_frame_and_outputs_are_causal() -> None:
    model = _tiny().eval()
    x = _clip()
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out["window"], out["frames"][:, -1])
        later = x.clone()
        later[:, -1] = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(7))
        out_later = model(later)
        # Frame t's output depends on frames 0..t only (its phase difference on frames t-1 and t).
        torch.testing.assert_close(out_later["frames"][:, :-1], out["frames"][:, :-1], rtol=0, atol=1e-6)
        assert not torch.allclose(out_later["frames"][:, -1], out["frames"][:, -1])
        earlier = x.clone()
        earlier[:, 0] = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(8))
        assert not torch.allclose(model(earlier)["window"], out["window"])


def test_bidirectional_gru_is_not_causal() -> None:
    model = _tiny(bidirectional=True, layers=2).eval()
    assert model.rnn.bidirectional and model.rnn.num_layers == 2
    x = _clip()
    later = x.clone()
    later[:, -1] = 0
    with torch.no_grad():
        assert not torch.allclose(model(later)["frames"][:, 0], model(x)["frames"][:, 0])


def test_same_seed_same_model_and_outputs() -> None:
    a, b, c = _tiny(seed=5).eval(), _tiny(seed=5).eval(), _tiny(seed=6).eval()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    x = _clip()
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
        assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
        assert torch.equal(a(x)["frames"], out_a["frames"])  # eval is deterministic
        assert not torch.equal(c(x)["window"], out_a["window"])


def test_options_grayscale_phase_size_logits_levels() -> None:
    model = _tiny(in_chans=1, phase_size=24, pyramid_levels=3, pyramid_orientations=4, n_bins=5, out_dims=3).eval()
    x = _clip(c=1)
    with torch.no_grad():
        bands = model.phase_inputs(x)
        out = model(x)
    assert [tuple(b.shape) for b in bands] == [(B * T, 4, 24, 24), (B * T, 4, 12, 12), (B * T, 4, 6, 6)]
    torch.testing.assert_close(bands[0].mean(dim=(-2, -1)), torch.zeros(B * T, 4), rtol=0, atol=1e-5)
    assert out["frames"].shape == (B, T, 3) and out["window"].shape == (B, 3)
    assert out["frame_logits"].shape == (B, T, 3, 5) and out["logits"].shape == (B, 3, 5)
    assert torch.equal(out["logits"], out["frame_logits"][:, -1])
    with pytest.raises(ValueError, match="in_chans"):
        _tiny(in_chans=2)


def test_no_per_frame_protocol_and_trial_arguments() -> None:
    model = _tiny()
    # encode_frames of single frames cannot see the previous frame: evaluation must run whole clips.
    assert not hasattr(model, "encode_frames") and not hasattr(model, "decode_frames")
    expected = {"cnn", "pyramid_levels", "pyramid_orientations", "pyramid_extension", "phase_size", "temporal_channels",
                "feature_dim", "hidden", "layers", "bidirectional", "dropout", "pretrained"}
    assert backbone_arguments("mimamo") == expected
    assert backbone_arguments("mimamo_tiny") == expected - {"cnn"}
    assert model.spatial.default_cfg["architecture"] == "test_resnet"


def test_pretrained_checkpoint_whole_model_or_spatial_cnn(tmp_path) -> None:
    source = _tiny(seed=1)
    whole = tmp_path / "whole.pt"
    torch.save({"state_dict": source.state_dict()}, whole)
    loaded = create_backbone("mimamo_tiny", pretrained=str(whole))
    assert loaded.load_report.ok
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    spatial_only = tmp_path / "resnet.pt"
    torch.save({"model": source.spatial.state_dict()}, spatial_only)
    torch.manual_seed(2)
    partial = create_backbone("mimamo_tiny", pretrained=str(spatial_only))
    assert partial.load_report.ok  # every key of the spatial CNN, nothing left over
    for key, value in source.spatial.state_dict().items():
        assert torch.equal(partial.spatial.state_dict()[key], value), key
    assert not torch.equal(partial.rnn.weight_ih_l0, source.rnn.weight_ih_l0)


# --- Aff-Wild2 rules ------------------------------------------------------------------------------------------------

M = -5.0


@pytest.mark.parametrize(("face", "expected"), [
    # face everywhere: unchanged
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]),
    # leading face-less steps: -5
    ([0, 0, 1, 1], [M, M, 0.3, 0.4]),
    # face-less steps later: the previous prediction, carried over a run
    ([1, 0, 0, 1], [0.1, 0.1, 0.1, 0.4]),
    ([1, 1, 1, 0], [0.1, 0.2, 0.3, 0.3]),
    # both
    ([0, 1, 0, 1], [M, 0.2, 0.2, 0.4]),
    # no face at all
    ([0, 0, 0, 0], [M, M, M, M]),
])
def test_fill_faceless_table(face: list[int], expected: list[float]) -> None:
    pred = np.array([[0.1, -0.1], [0.2, -0.2], [0.3, -0.3], [0.4, -0.4]])
    out = fill_faceless(pred, np.array(face, dtype=bool))
    exp = np.array(expected)
    np.testing.assert_array_equal(out[:, 0], exp)
    np.testing.assert_array_equal(out[:, 1], np.where(exp == M, M, -exp))
    np.testing.assert_array_equal(pred[:, 0], [0.1, 0.2, 0.3, 0.4])  # input untouched


def test_fill_faceless_edge_cases() -> None:
    assert fill_faceless(np.zeros((0, 2)), np.zeros(0, dtype=bool)).shape == (0, 2)
    # Whatever a face-less row held (here NaN from a model never run on it) is replaced.
    out = fill_faceless(np.array([[np.nan], [1.0], [np.nan]]), np.array([False, True, False]))
    np.testing.assert_array_equal(out, [[M], [1.0], [1.0]])
    with pytest.raises(ValueError, match="pred"):
        fill_faceless(np.zeros(3), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="face"):
        fill_faceless(np.zeros((3, 2)), np.ones(4, dtype=bool))


@pytest.mark.parametrize(("labels", "expected"), [
    ([[0.5, -0.2]], [[True, True]]),
    ([[-5, -5]], [[False, False]]),
    ([[-5, 0.3]], [[False, True]]),
    ([[np.nan, 0.3]], [[False, True]]),  # the adapter's spelling of -5
    ([[-1.0, 1.0]], [[True, True]]),  # the scale's ends are annotations
    ([[0.0, -4.99]], [[True, True]]),
])
def test_scored_mask_table(labels: list, expected: list) -> None:
    np.testing.assert_array_equal(scored_mask(np.array(labels, dtype=float)), np.array(expected))
