"""Clip augmentations for training (SPEC 001 and 000), chosen by name from a registry or from flat trial-config keys.

A clip is a ``uint8`` tensor ``(T, C, H, W)`` with ``C = 3`` (RGB) or ``C = 1`` (grayscale). Every augmentation draws
its random choice ONCE per clip from the ``torch.Generator`` it is given and applies that same choice to every frame
(same flip, same crop box, same cut-out squares, same RandAugment ops and magnitudes), so the temporal signal the model
learns from is not destroyed by frame-to-frame jitter. Two rules are per frame or per pixel by definition: *missing
frames* picks which frames go black, *salt & pepper* picks which pixels are noisy.

Augmentations (registry name, parameters, paper defaults):

==================  =====================================  ===========================================================
name                parameters                             rule
==================  =====================================  ===========================================================
``hflip``           ``p=0.5``                              mirror the whole clip with probability ``p`` (001, LiRA)
``random_crop``     ``size=80``                            one random ``size x size`` box for the clip (001: 80 of 96);
                                                           ``size < 1`` is a fraction of the frame side; evaluation
                                                           uses the centre box of the same size
``cropout``         ``n=5``, ``area=0.25``                 ``n`` black squares covering ``area`` of the frame in total,
                                                           same squares on every frame (001)
``missing_frames``  ``fraction=0.2``                        ``round_half_up(fraction * T)`` frames set black (001)
``solarize``        ``p=0.2``                              with probability ``p`` per clip, values above the clip's mean
                                                           intensity become ``255 - x`` (001: "above the average")
``salt_pepper``     ``amount=0.02``                        each pixel independently, with probability ``amount``, set to
                                                           0 or 255 (50/50, all channels) (001; amount not given there)
``randaugment``     ``num_ops=2``, ``magnitude=9``         torchvision v2 RandAugment, one draw of ops, magnitudes and
                                                           signs for the whole clip (000, "RandAugment per clip")
``grayscale``       ``p=0.0``                              with probability ``p`` turn gray, keeping ``C`` channels
==================  =====================================  ===========================================================

The trial-config keys (``aug_*``) that choose them, and every parameter's rule, are in
:mod:`trainables.data.augment_settings` (torch-free, for the sweep's driver); each augmentation here inherits its
settings class from there and adds the transform.

The pipeline order is fixed: geometric (random crop, flip) -> photometric (RandAugment, solarize, grayscale) ->
occlusion (crop-out, missing frames, salt & pepper), so occluders stay black and noise stays pure 0/255 instead of
being rotated, blurred or re-toned by later steps.

Determinism: the output depends only on the clip and the generator's state. RandAugment (torchvision) draws from
torch's global RNG, so :class:`RandAugmentClip` first draws a seed from the given generator (:func:`draw_seed`) and
runs torchvision inside ``torch.random.fork_rng`` seeded with it; the global RNG is restored afterwards. That is safe in
DataLoader worker processes (one process, one thread of Python) but not when several threads augment concurrently in
one process.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from trainables.data.augment_settings import (
    CropoutSettings,
    GrayscaleSettings,
    HFlipSettings,
    MissingFramesSettings,
    RandAugmentSettings,
    RandomCropSettings,
    SaltPepperSettings,
    SolarizeSettings,
    check_parameters,
    crop_hw,
    crop_output_size,
    parameters,
    parse_augment_config,
    resolve_size,
)
from trainables.registry import Registry

__all__ = [
    "ClipAugmentation",
    "register_augmentation",
    "list_augmentations",
    "create_augmentation",
    "build_train_transform",
    "build_eval_transform",
    "draw_seed",
    "HFlip",
    "RandomCrop",
    "CenterCrop",
    "Cropout",
    "MissingFrames",
    "Solarize",
    "SaltPepper",
    "RandAugmentClip",
    "Grayscale",
    "ClipPipeline",
    "EvalTransform",
]


@runtime_checkable
class ClipAugmentation(Protocol):
    """A training augmentation: ``(T, C, H, W)`` uint8 clip and a generator in, augmented uint8 clip out.

    Implementations never modify the input clip in place (it may be a read-only memory map)."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor: ...


_REGISTRY: Registry[type] = Registry("augmentation")
_T = TypeVar("_T", bound=type)


def register_augmentation(name: str) -> Callable[[_T], _T]:
    """Class decorator: make the augmentation constructible by ``create_augmentation(name, **params)``."""
    return _REGISTRY.register_named(name)


def list_augmentations() -> list[str]:
    """Registered augmentation names, sorted."""
    return _REGISTRY.names()


def create_augmentation(name: str, **params: Any) -> ClipAugmentation:
    """Instantiate the augmentation registered as ``name`` with ``params``.

    Raises:
        ValueError: unknown ``name`` (the message lists the registered names), unknown parameter (the message lists the
            allowed ones) or a parameter outside its allowed range (the message names it and the range).
    """
    cls = _REGISTRY.get(name)
    check_parameters(name, cls, params)
    return cls(**params)


# ----------------------------------------------------------------------------------------------------------------
# Random draws, all from the given generator


def _check_clip(clip: Tensor) -> None:
    if not isinstance(clip, Tensor) or clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[1] not in (1, 3):
        desc = f"{tuple(clip.shape)} {clip.dtype}" if isinstance(clip, Tensor) else type(clip).__name__
        raise ValueError(f"expected a uint8 clip of shape (T, C, H, W) with C in {{1, 3}}, got {desc}")


def _coin(p: float, generator: torch.Generator) -> bool:
    """One Bernoulli(p) draw. Always consumes one number, so later draws do not shift with ``p``."""
    return bool(torch.rand((), generator=generator).item() < p)


def _randint(high_inclusive: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator).item())


def draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator`` (one ``torch.randint`` call); used to seed torchvision's global-RNG
    transforms reproducibly. Public so tests can replay a draw from a copy of the generator state."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64).item())


# ----------------------------------------------------------------------------------------------------------------
# Geometric


@register_augmentation("hflip")
class HFlip(HFlipSettings):
    """Horizontal flip of the whole clip with probability ``p`` (001 / LiRA: ``p = 0.5``)."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        return TF.horizontal_flip(clip) if _coin(self.p, generator) else clip


@register_augmentation("random_crop")
class RandomCrop(RandomCropSettings):
    """One random ``size x size`` box per clip (001: 80 x 80 of 96 x 96 for RECOLA, 110 of the SEWA crops).

    ``size`` is pixels (integer >= 1) or a fraction of the frame side in (0, 1). The top-left corner is uniform over
    all positions that keep the box inside the frame. Evaluation uses :class:`CenterCrop` of the same size so that
    the model sees the same input size in training and testing."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        height, width = clip.shape[-2:]
        ch, cw = self.output_size(height, width)
        top = _randint(height - ch, generator)
        left = _randint(width - cw, generator)
        return TF.crop(clip, top, left, ch, cw)


class CenterCrop:
    """Deterministic centre box of the same size rule as :class:`RandomCrop` (the evaluation counterpart).

    The box starts at ``round((H - h) / 2)`` (torchvision's ``center_crop``). Not registered (it is not a random
    augmentation); the generator is accepted and ignored so it still fits the :class:`ClipAugmentation` protocol."""

    def __init__(self, size: int | float = 80) -> None:
        self.size = resolve_size("center_crop", size)

    def __call__(self, clip: Tensor, generator: torch.Generator | None = None) -> Tensor:
        ch, cw = crop_hw("center_crop", self.size, *clip.shape[-2:])
        return TF.center_crop(clip, [ch, cw])


# ----------------------------------------------------------------------------------------------------------------
# Photometric


@register_augmentation("randaugment")
class RandAugmentClip(RandAugmentSettings):
    """torchvision v2 RandAugment (Cubuk et al. 2020) with ONE draw per clip (000: RandAugment per clip).

    ``num_ops`` operations are drawn uniformly (with replacement) from torchvision's 14-op space, all at magnitude bin
    ``magnitude`` of 31 (0..30) with a random sign per op. The clip is wrapped as a ``tv_tensors.Video``, which v2
    transforms treat as one sample: the ops, magnitudes and signs are drawn once and applied to every frame (content-
    dependent ops such as Equalize and AutoContrast still compute their histogram per frame, as on single images).

    torchvision draws from torch's global RNG; a seed is drawn from ``generator`` with :func:`draw_seed` and the
    transform runs inside ``torch.random.fork_rng`` seeded with it, so the result is a function of the generator state
    and the caller's global RNG is left untouched. Rotations and shears fill with black, interpolation is nearest.
    """

    _transform = None  # torchvision's transform, built on first use (per instance)

    @property
    def transform(self):
        if self._transform is None:

            self._transform = v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude,
                                             num_magnitude_bins=self.NUM_MAGNITUDE_BINS)
        return self._transform

    def apply_seeded(self, clip: Tensor, seed: int) -> Tensor:
        """Apply RandAugment with torch's global RNG seeded by ``seed`` (restored afterwards)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.transform(tv_tensors.Video(clip))
        return out.as_subclass(torch.Tensor)

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        seed = draw_seed(generator)
        if self.num_ops == 0:
            return clip
        return self.apply_seeded(clip, seed)


@register_augmentation("solarize")
class Solarize(SolarizeSettings):
    """With probability ``p`` per clip, invert the values above the clip's mean intensity: ``x -> 255 - x`` where
    ``x > mean(clip)``, others unchanged (001: "we solarize above the average lightness", applied to 20% of clips).

    The threshold is the mean over the whole clip (all frames, pixels and channels), so every frame of a clip uses the
    same threshold; for RGB each channel value is compared with it, as torchvision's solarize does."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        if not _coin(self.p, generator):
            return clip
        mean = clip.float().mean()
        return torch.where(clip.float() > mean, 255 - clip, clip)


@register_augmentation("grayscale")
class Grayscale(GrayscaleSettings):
    """With probability ``p`` per clip, convert RGB to gray (ITU-R 601 luma, torchvision) and repeat it over the 3
    channels so the model's input shape does not change. A 1-channel clip is returned as is."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        if not _coin(self.p, generator) or clip.shape[1] == 1:
            return clip
        return TF.rgb_to_grayscale(clip, num_output_channels=clip.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# Occlusion


@register_augmentation("cropout")
class Cropout(CropoutSettings):
    """``n`` black squares covering ``area`` of the frame in total, at the same positions on every frame (001: 5
    squares, 25%).

    Each square has side ``round(sqrt(area * H * W / n))``. Positions are uniform; a square is re-drawn (up to 100
    times) while it overlaps one already placed, so the black area is the requested fraction up to rounding of the
    side. When no free spot is found (large ``area``), the last draw is kept and squares may overlap."""

    MAX_TRIES = 100

    def boxes(self, height: int, width: int, generator: torch.Generator) -> list[tuple[int, int, int]]:
        """The squares as ``(top, left, side)``."""
        side = round(math.sqrt(self.area * height * width / self.n))
        side = max(1, min(side, height, width))
        placed: list[tuple[int, int, int]] = []
        for _ in range(self.n):
            for _try in range(self.MAX_TRIES):
                top, left = _randint(height - side, generator), _randint(width - side, generator)
                free = all(top >= t + side or t >= top + side or left >= l + side or l >= left + side
                           for t, l, _s in placed)
                if free:
                    break
            placed.append((top, left, side))
        return placed

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        out = clip.clone()
        for top, left, side in self.boxes(clip.shape[-2], clip.shape[-1], generator):
            out[..., top:top + side, left:left + side] = 0
        return out


@register_augmentation("missing_frames")
class MissingFrames(MissingFramesSettings):
    """Set ``k = floor(fraction * T + 0.5)`` frames, chosen uniformly without replacement per clip, to black (001:
    20% of frames). The frames' labels are untouched: the model must carry the estimate over the gap."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        k = self.num_missing(clip.shape[0])
        if k == 0:
            return clip
        idx = torch.randperm(clip.shape[0], generator=generator)[:k].to(clip.device)
        out = clip.clone()
        out[idx] = 0
        return out


@register_augmentation("salt_pepper")
class SaltPepper(SaltPepperSettings):
    """Salt & pepper noise: every pixel of every frame independently, with probability ``amount``, becomes white (255)
    or black (0) with equal chance, in all channels (001: "classic noise with 50% salt vs pepper split"; the paper
    gives no amount, 0.02 is the default here)."""

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        t, _c, h, w = clip.shape
        u = torch.rand((t, 1, h, w), generator=generator).to(clip.device)
        # One uniform per pixel decides both: u < amount/2 -> pepper, amount/2 <= u < amount -> salt.
        out = clip.clone()
        out.masked_fill_((u < self.amount / 2).expand_as(clip), 0)
        out.masked_fill_(((u >= self.amount / 2) & (u < self.amount)).expand_as(clip), 255)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Config -> pipeline


class ClipPipeline:
    """The training transform: the enabled augmentations in order, all drawing from one generator.

    Picklable (plain module-level classes), so it can be built once and shipped to DataLoader workers."""

    def __init__(self, steps: list[tuple[str, ClipAugmentation]]) -> None:
        self.steps = list(steps)

    def __call__(self, clip: Tensor, generator: torch.Generator) -> Tensor:
        _check_clip(clip)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"expected a torch.Generator, got {type(generator).__name__}")
        for key, aug in self.steps:
            try:
                clip = aug(clip, generator)
            except ValueError as err:
                # Errors that only show with the real clip (crop larger than the frame) name the config key.
                raise ValueError(f"{key}: {err}") from err
        return clip

    def __repr__(self) -> str:
        def show(aug: Any) -> str:
            params = ", ".join(f"{k}={v!r}" for k, v in parameters(aug).items())
            return f"{type(aug).__name__}({params})"

        return f"ClipPipeline([{', '.join(show(a) for _key, a in self.steps)}])"


class EvalTransform:
    """The evaluation transform: the centre crop matching the training random crop, otherwise the identity."""

    per_frame = True  # each frame is transformed alike, whatever clip it is in (evaluation may share frame features)

    def __init__(self, crop: CenterCrop | None, key: str = "aug_random_crop") -> None:
        self.crop = crop
        self.key = key

    def __call__(self, clip: Tensor) -> Tensor:
        _check_clip(clip)
        if self.crop is None:
            return clip
        try:
            return self.crop(clip)
        except ValueError as err:
            raise ValueError(f"{self.key}: {err}") from err


def build_train_transform(
    config: Mapping[str, Any], *, frame_size: int | tuple[int, int] | None = None
) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Training transform for the ``aug_*`` keys of ``config`` (see the module docstring for the table).

    The returned callable takes a uint8 ``(T, C, H, W)`` clip and a ``torch.Generator`` and returns a uint8 clip
    (``(T, C, h, w)`` with the crop size when ``aug_random_crop`` is on). Apply it before normalisation. When
    ``frame_size`` (``S`` or ``(H, W)``) is given, a crop larger than the frame is rejected here rather than on the
    first clip.

    Raises:
        ValueError: unknown ``aug_*`` key or invalid value (naming the key and the allowed range).
    """
    steps = parse_augment_config(config, make=create_augmentation)
    if frame_size is not None:
        crop_output_size(config, frame_size)
    return ClipPipeline(steps)


def build_eval_transform(config: Mapping[str, Any], *,
                         frame_size: int | tuple[int, int] | None = None) -> Callable[[Tensor], Tensor]:
    """Evaluation transform for ``config``: the centre crop of the training crop size when ``aug_random_crop`` is on
    (so train and test inputs have the same size), the identity otherwise; no random augmentation.

    Raises:
        ValueError: as :func:`build_train_transform` (the whole config is validated).
    """
    steps = parse_augment_config(config)
    if frame_size is not None:
        crop_output_size(config, frame_size)
    for key, settings in steps:
        if isinstance(settings, RandomCropSettings):
            return EvalTransform(CenterCrop(settings.size), key)
    return EvalTransform(None)
