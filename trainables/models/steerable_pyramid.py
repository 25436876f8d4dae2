"""Complex steerable pyramid (Portilla & Simoncelli 2000) in the Fourier domain, in torch, and the phase-difference
images of MIMAMO Net's temporal stream (paper 004), computed as the MIMAMO authors' code computes them.

Pyramid. A grayscale image's centred 2D spectrum is split by a radial raised-cosine pair into a high-pass residual
(not kept) and a low-pass part. Each of the ``height`` band-pass levels then multiplies the low-pass spectrum by a
radial high-pass mask (one octave lower per level) and by ``orientations`` one-sided angular masks
(``cos(theta - pi*k/orientations)**(orientations-1)`` on the half plane around direction k, zero on the other half).
The one-sided mask makes the inverse FFT complex (an analytic-signal band): its modulus is the local amplitude, its
argument the local phase. After each level the low-pass spectrum is cropped to half size (one octave down). Radii are
in units where the Nyquist frequency is 1; with ``twidth=1`` level ``l`` passes radii ``~[2**-(l+2), 2**-l]`` and
peaks near ``2**-(l+1)``, i.e. a wavelength of about ``4 * 2**l`` pixels (level 0: ~4 px, level 1: ~8 px, level 2:
~16 px). The masks' squares sum to one (a tight frame), as in the reference MATLAB ``buildSCFpyr`` and the authors'
``SCFpyr_PyTorch``; bands of lower levels come out larger in value because every level's inverse FFT normalises by its
own, smaller size (the phase, which is all MIMAMO uses, is unaffected). The masks are evaluated in closed form where
the authors interpolate lookup tables; the two agree to about 1e-5 of a band's largest coefficient.

Symmetric extension (the authors' ``symmetric_extension_batch``, on by default). The FFT treats an image as one period
of a periodic signal, so without care a band near the left border sees the right border's pixels. The authors
therefore mirror every H x W frame into a 2H x 2W image (the frame, its left-right mirror to the right, its up-down
mirror below, the frame turned by 180 degrees in the corner; each mirror repeats the edge row / column), build the
pyramid of that, and keep the top-left quadrant of every level (``[:h_l // 2, :w_l // 2]`` of the extended level's
``h_l x w_l``), which covers the original frame. The mirrored image is continuous across its borders and its periodic
repetition is too, so no band wraps around. ``symmetric_extension=False`` skips this (a deviation from the authors:
four times fewer FFT bins, but coefficients within about a wavelength of a border mix in the opposite border).

Phase difference (the micro-motion input of MIMAMO Net). By the Fourier shift theorem a translation by ``d`` pixels
moves a band's local phase by ``2*pi*f.d``: the change of consecutive frames' phases measures local motion per band.
The authors' ``extract`` / ``extract_phase`` take every coefficient's phase with ``atan2`` (in [-pi, pi]), unwrap it
over time with their ``torch_unwrap``, blur it spatially weighted by the amplitude (Gaussian, std 2, 11 taps),
difference consecutive frames, remove each band's spatial mean and clamp to [-5*pi, 5*pi].

Their ``torch_unwrap(phase, discont=pi)``: ``dd`` is the step between consecutive frames, ``ddmod = fmod(dd + pi,
2*pi) - pi`` (with ``-pi`` turned into ``pi`` where ``dd > 0``), the correction ``ddmod - dd`` is zeroed where
``|dd| < pi``, and the cumulative sum of the corrections is added to frames 1..T-1. ``torch.fmod`` keeps the sign of the
dividend (unlike ``numpy.unwrap``, which uses a floored modulo), so for ``dd < -pi`` it returns ``dd + pi`` unchanged
and nothing is corrected: only steps above ``+pi`` are brought down by ``2*pi``. A step therefore ends in [-2*pi, pi],
not in (-pi, pi]. :func:`authors_unwrap_step` is that rule for one step; without the blur the difference of two
consecutive unwrapped phases is exactly the raw step plus its own correction (the earlier corrections are in both
frames and cancel), so :func:`phase_difference` reproduces their unwrap frame by frame, without cumulative sums.

:func:`phase_difference` returns one difference per level at the level's own resolution, as the authors' code feeds
it (the first level enters the temporal CNN at the input, the second after one stride-2 block), so nothing is
resampled; the mean removal and the clamp happen in the model (:meth:`trainables.models.mimamo.Mimamo.phase_inputs`).
The authors' released model uses 2 band-pass levels (their ``height=4`` counts the two residuals; they keep levels 1
and 2 of their list) and 2 orientations on 48x48 phase crops (their ``Phase_Difference_Extractor`` defaults to 4
orientations); paper 004 does not state the numbers. Their ``build`` refuses more than ``floor(log2(2 * side)) - 4``
band-pass levels (2 for 48x48 frames); here any height whose coarsest cropped level keeps at least 2x2 pixels is built,
so a search may try 3. Deviations, for per-frame outputs on any clip: one difference per frame (frame t minus frame
t-1, zero for the first frame) instead of their 12 differences per GRU step, and no amplitude-weighted spatial blur.
"""
from __future__ import annotations

import math

import torch

from trainables.shapes import pyramid_level_shapes, pyramid_spectrum_shapes

__all__ = ["ComplexSteerablePyramid", "authors_unwrap_step", "phase_difference", "symmetric_extension",
           "to_grayscale", "wrap_phase"]

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


def to_grayscale(frames: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) with C = 3 (RGB) or 1 -> (..., 1, H, W) luma.

    Raises:
        ValueError: C is neither 1 nor 3.
    """
    c = frames.shape[-3]
    if c == 1:
        return frames
    if c != 3:
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels, got {c}")
    w = torch.tensor(_LUMA, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames * w).sum(dim=-3, keepdim=True)


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Map angles onto (-pi, pi]."""
    wrapped = torch.remainder(phase + math.pi, 2 * math.pi) - math.pi  # [-pi, pi)
    return torch.where(wrapped <= -math.pi, wrapped + 2 * math.pi, wrapped)


def authors_unwrap_step(step: torch.Tensor) -> torch.Tensor:
    """One time step of the MIMAMO authors' ``torch_unwrap`` (module docstring): the raw step between two phases in
    [-pi, pi], corrected as their code corrects it. Steps above ``pi`` lose ``2*pi``; steps below ``-pi`` are kept as
    they are (``torch.fmod`` truncates toward zero); the result lies in [-2*pi, pi]."""
    mod = torch.fmod(step + math.pi, 2 * math.pi) - math.pi
    mod = torch.where((mod == -math.pi) & (step > 0), torch.full_like(mod, math.pi), mod)
    # Their correction is added to the raw step, not substituted for it: the same rounding as theirs.
    correction = torch.where(step.abs() < math.pi, torch.zeros_like(step), mod - step)
    return step + correction


def symmetric_extension(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2H, 2W): the image, its left-right mirror to the right, its up-down mirror below and the
    image turned by 180 degrees in the bottom-right corner (the MIMAMO authors' ``symmetric_extension_batch``)."""
    top = torch.cat([images, images.flip(-1)], dim=-1)
    return torch.cat([top, top.flip(-2)], dim=-2)


def _raised_cosine(log_rad: torch.Tensor, start: float, twidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) radial masks with low**2 + high**2 = 1: low = 1 below ``start`` (log2 radius), high = 1 above
    ``start + twidth``, a quarter cosine / sine in between."""
    t = ((log_rad - start) / twidth).clamp(0.0, 1.0)
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop the centred spectrum (last two dims) to (h, w) around DC (index n // 2 of a fftshift-ed axis)."""
    big_h, big_w = x.shape[-2:]
    top, left = big_h // 2 - h // 2, big_w // 2 - w // 2
    return x[..., top:top + h, left:left + w]


class ComplexSteerablePyramid(torch.nn.Module):
    """Complex steerable pyramid of grayscale images, computed with FFTs (CPU or GPU, batched).

    Args:
        height: number of band-pass levels (the high-pass and low-pass residuals are not returned). Each level is
            one octave below the previous one and half its size; ``height`` must leave levels of at least 2x2 pixels.
        orientations: number of orientation bands per level (directions ``pi * k / orientations``, k = 0..n-1).
        twidth: width of the radial transitions in octaves (1 as in Portilla & Simoncelli).
        symmetric_extension: mirror every image to 2H x 2W before the FFT and keep the top-left quadrant of every
            level, as the MIMAMO authors do (module docstring). False is a deviation from them: the FFT of the frame
            as it is, over a quarter of the bins, with bands near a border wrapping around to the opposite one.

    The masks depend only on the image size and are rebuilt on every call (a few element-wise ops on the spectrum's
    grid, 2H x 2W when extending);
    no parameters, no gradients needed (the transform is linear, so autograd would work through it all the same).
    """

    def __init__(self, height: int = 2, orientations: int = 4, twidth: float = 1.0, symmetric_extension: bool = True):
        super().__init__()
        if height < 1:
            raise ValueError(f"height must be >= 1, got {height}")
        if orientations < 1:
            raise ValueError(f"orientations must be >= 1, got {orientations}")
        if twidth <= 0:
            raise ValueError(f"twidth must be > 0, got {twidth}")
        self.height, self.orientations, self.twidth = height, orientations, float(twidth)
        self.symmetric_extension = bool(symmetric_extension)
        order = orientations - 1
        # Angular gain such that the squared masks of all orientations (both half planes) sum to one.
        self._angle_gain = 2.0 * math.sqrt((2.0 ** (2 * order)) * math.factorial(order) ** 2
                                           / (orientations * math.factorial(2 * order)))

    def level_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        """(h_l, w_l) of every returned level for an h x w image: ``ceil(h / 2**l) x ceil(w / 2**l)`` without the
        extension; with it the top-left quadrant of the extended level, ``h_l // 2`` as the authors crop (the same
        for sizes divisible by ``2**(height-1)``, at most one pixel less on a coarse level of other sizes). The one
        rule, shared with the driver's shape check (``trainables.shapes``)."""
        return pyramid_level_shapes(h, w, self.height, self.symmetric_extension)

    @staticmethod
    def _polar(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """log2 radius (Nyquist = 1) and angle of every bin of a centred h x w spectrum."""
        y = (torch.arange(h, device=device, dtype=dtype) - h // 2) / (h / 2)
        x = (torch.arange(w, device=device, dtype=dtype) - w // 2) / (w / 2)
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        rad = torch.sqrt(xx ** 2 + yy ** 2)
        # DC gets a radius far below every transition: low-pass 1, band-pass 0 there.
        rad = rad.clamp_min(1.0 / (4 * max(h, w)))
        return torch.log2(rad), torch.atan2(yy, xx)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """frames: (N, 1, H, W) real grayscale -> one complex tensor (N, orientations, h_l, w_l) per level.

        Raises:
            ValueError: wrong shape, or an image too small for ``height`` levels.
        """
        if frames.dim() != 4 or frames.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) grayscale frames, got {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        if min(self.level_shapes(h, w)[-1]) < 2:
            raise ValueError(f"a {h}x{w} image is too small for {self.height} pyramid levels")
        shapes = pyramid_spectrum_shapes(h, w, self.height, self.symmetric_extension)
        real_dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
        x = frames[:, 0].to(real_dtype)
        if self.symmetric_extension:
            x = symmetric_extension(x)
        spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        log_rad, angle = self._polar(*shapes[0], x.device, real_dtype)
        lo0, _ = _raised_cosine(log_rad, -self.twidth, self.twidth)
        low = spectrum * lo0
        centres = torch.arange(self.orientations, device=x.device, dtype=real_dtype) * (math.pi / self.orientations)
        phase_factor = (-1j) ** (self.orientations - 1)
        out = []
        for level in range(self.height):
            # The band-pass of this level: the low-pass part above the transition one octave further down.
            start = -(level + 1) - self.twidth
            lomask, himask = _raised_cosine(log_rad, start, self.twidth)
            delta = wrap_phase(angle.unsqueeze(0) - centres.view(-1, 1, 1))  # (O, h, w)
            angmask = self._angle_gain * torch.cos(delta).clamp_min(0.0) ** (self.orientations - 1)
            angmask = torch.where(delta.abs() < math.pi / 2, angmask, torch.zeros_like(angmask))
            # Shifting the masks and the low-pass once, rather than every orientation's band, and applying the constant
            # phase factor to the (cropped) output: the same values, fewer full-size passes over the batch.
            mask = torch.fft.ifftshift(himask * angmask, dim=(-2, -1))
            band = torch.fft.ifftshift(low, dim=(-2, -1)).unsqueeze(1) * mask.unsqueeze(0)
            coeffs = torch.fft.ifft2(band)
            if self.symmetric_extension:  # the quadrant that holds the frame itself
                coeffs = coeffs[..., :shapes[level][0] // 2, :shapes[level][1] // 2]
            out.append(coeffs * phase_factor)
            if level + 1 < self.height:
                nh, nw = shapes[level + 1]
                low = _centre_crop(low, nh, nw) * _centre_crop(lomask, nh, nw)
                log_rad, angle = _centre_crop(log_rad, nh, nw), _centre_crop(angle, nh, nw)
        return out


def phase_difference(pyramid: ComplexSteerablePyramid, frames: torch.Tensor) -> list[torch.Tensor]:
    """Phase change between consecutive frames, per pyramid band, unwrapped as the MIMAMO authors unwrap it.

    Args:
        pyramid: the decomposition to use.
        frames: (B, T, C, H, W) with C = 1 (grayscale) or 3 (RGB, converted to luma here).

    Returns:
        One real tensor (B, T, orientations, h_l, w_l) per level: entry t is ``atan2`` of frame t's coefficient minus
        ``atan2`` of frame t-1's, corrected by :func:`authors_unwrap_step` (in [-2*pi, pi]; module docstring). Entry 0
        is all zeros (no previous frame: "no motion"), so the time axis stays aligned with the frames and every frame
        gets an output. A coefficient that is exactly zero has phase 0, as ``atan2(0, 0)`` gives in their code.
    """
    if frames.dim() != 5:
        raise ValueError(f"expected (B, T, C, H, W) frames, got {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    gray = to_grayscale(frames).flatten(0, 1)
    out = []
    for coeffs in pyramid(gray):
        coeffs = coeffs.view(b, t, *coeffs.shape[1:])
        phase = torch.angle(coeffs)
        diff = authors_unwrap_step(phase[:, 1:] - phase[:, :-1])
        out.append(torch.cat([torch.zeros_like(diff[:, :1]), diff], dim=1).to(frames.dtype))
    return out
