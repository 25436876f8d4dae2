"""The ``aug_*`` trial settings, parsed and checked without torch: the sweep's driver validates every configuration's
augmentations with this module before Ray starts, and needs neither torch nor torchvision (about 3 s of start-up).
The clip transforms that apply them are in :mod:`trainables.data.augment`, which only trial processes import.

Each augmentation's parameters, their defaults and allowed ranges are written once, in its settings class here
(:class:`HFlipSettings` ...); the augmentation in :mod:`trainables.data.augment` inherits that class and adds the
transform, so ``create_augmentation("hflip", p=2)`` and ``aug_hflip: 2`` are refused by the same rule.

Trial-config keys (flat, so a search space can sweep each one; other keys of the config are ignored, unknown ``aug_*``
keys are an error):

=============================  =========  ====================================================================
key                            default    meaning
=============================  =========  ====================================================================
``aug_hflip``                  0 (off)    flip probability in [0, 1]
``aug_random_crop``            0 (off)    crop side in pixels (integer >= 1) or a fraction of the side in (0, 1)
``aug_cropout``                false      turn crop-out on
``aug_cropout_n``              5          number of squares, integer >= 1
``aug_cropout_area``           0.25       total covered fraction of the frame, in (0, 1)
``aug_missing_frames``         0 (off)    fraction of frames set black, in [0, 1]
``aug_solarize``               0 (off)    probability per clip, in [0, 1]
``aug_salt_pepper``            0 (off)    fraction of noisy pixels, in [0, 1]
``aug_randaugment``            false      turn RandAugment on
``aug_randaugment_ops``        2          number of ops per clip, integer >= 0
``aug_randaugment_magnitude``  9          magnitude bin, integer in [0, 30] (31 bins, as torchvision)
``aug_grayscale``              0 (off)    probability per clip, in [0, 1]
=============================  =========  ====================================================================

A numeric switch key also accepts a bool: ``true`` means the paper default of its parameter, ``false`` means off.
Parameter keys (``aug_cropout_n`` ...) are validated even while their switch is off, so a bad value is never silent.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trainables.registry import Registry

_SETTINGS: Registry[type] = Registry("augmentation")
_T = TypeVar("_T", bound=type)


def settings_class(name: str) -> Callable[[_T], _T]:
    """Class decorator: the parameters of augmentation ``name`` (for :func:`make_settings` and the config parser)."""
    return _SETTINGS.register_named(name)


def check_parameters(name: str, cls: type, params: Mapping[str, Any]) -> None:
    """Refuse parameters that ``cls``'s constructor does not take, listing the ones it does.

    Raises:
        ValueError: an unknown parameter.
    """
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}")


def make_settings(name: str, **params: Any):
    """The checked settings of the built-in augmentation ``name``.

    Raises:
        ValueError: unknown ``name`` or parameter, or a value outside its range (the message names it and the range).
    """
    cls = _SETTINGS.get(name)
    check_parameters(name, cls, params)
    return cls(**params)


def parameters(settings: Any) -> dict[str, Any]:
    """The public attributes of an augmentation's settings: the keyword arguments that build it again."""
    return {k: v for k, v in vars(settings).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------------------------------------------
# Value checks: every message names the parameter, the value and what is allowed.


def probability(aug: str, param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{aug}: {param}={value!r} is not allowed; expected a number in [0, 1]")
    return float(value)


def integer(aug: str, param: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer()
    if ok:
        ok = int(value) >= lo and (hi is None or int(value) <= hi)
    if not ok:
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise ValueError(f"{aug}: {param}={value!r} is not allowed; expected {allowed}")
    return int(value)


def resolve_size(aug: str, size: Any) -> int | float:
    """``size`` as pixels (int >= 1) or a fraction of the frame side (float in (0, 1))."""
    if not isinstance(size, bool) and isinstance(size, numbers.Real):
        if 0.0 < float(size) < 1.0:
            return float(size)
        if float(size) >= 1.0 and float(size).is_integer():
            return int(size)
    raise ValueError(f"{aug}: size={size!r} is not allowed; expected pixels (an integer >= 1) "
                     "or a fraction of the frame side in (0, 1)")


def crop_hw(aug: str, size: int | float, height: int, width: int) -> tuple[int, int]:
    """Crop height and width for a ``height x width`` frame; a fraction applies to each side (square frames give a
    square crop)."""
    if isinstance(size, float):
        ch, cw = max(1, round(size * height)), max(1, round(size * width))
    else:
        ch = cw = size
    if ch > height or cw > width:
        raise ValueError(f"{aug}: size={size!r} gives a {ch}x{cw} crop, larger than the {height}x{width} frame; "
                         f"allowed: 1..{min(height, width)} pixels or a fraction in (0, 1)")
    return ch, cw


# ----------------------------------------------------------------------------------------------------------------
# The settings of each augmentation (the rules themselves are described on the transforms)


@settings_class("hflip")
class HFlipSettings:
    def __init__(self, p: float = 0.5) -> None:
        self.p = probability("hflip", "p", p)


@settings_class("random_crop")
class RandomCropSettings:
    def __init__(self, size: int | float = 80) -> None:
        self.size = resolve_size("random_crop", size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return crop_hw("random_crop", self.size, height, width)


@settings_class("randaugment")
class RandAugmentSettings:
    NUM_MAGNITUDE_BINS = 31

    def __init__(self, num_ops: int = 2, magnitude: int = 9) -> None:
        self.num_ops = integer("randaugment", "num_ops", num_ops, 0)
        self.magnitude = integer("randaugment", "magnitude", magnitude, 0, self.NUM_MAGNITUDE_BINS - 1)


@settings_class("solarize")
class SolarizeSettings:
    def __init__(self, p: float = 0.2) -> None:
        self.p = probability("solarize", "p", p)


@settings_class("grayscale")
class GrayscaleSettings:
    def __init__(self, p: float = 0.0) -> None:
        self.p = probability("grayscale", "p", p)


@settings_class("cropout")
class CropoutSettings:
    def __init__(self, n: int = 5, area: float = 0.25) -> None:
        self.n = integer("cropout", "n", n, 1)
        if isinstance(area, bool) or not isinstance(area, numbers.Real) or not 0.0 < float(area) < 1.0:
            raise ValueError(f"cropout: area={area!r} is not allowed; expected a fraction in (0, 1)")
        self.area = float(area)


@settings_class("missing_frames")
class MissingFramesSettings:
    def __init__(self, fraction: float = 0.2) -> None:
        self.fraction = probability("missing_frames", "fraction", fraction)

    def num_missing(self, num_frames: int) -> int:
        # Half-up rounding (not Python's half-to-even) so the count grows monotonically with the clip length.
        return min(num_frames, math.floor(self.fraction * num_frames + 0.5))


@settings_class("salt_pepper")
class SaltPepperSettings:
    def __init__(self, amount: float = 0.02) -> None:
        self.amount = probability("salt_pepper", "amount", amount)


# ----------------------------------------------------------------------------------------------------------------
# Config -> settings


@dataclass(frozen=True)
class _Switch:
    """A config key that turns augmentation ``name`` on. ``param`` is the parameter its numeric value feeds (``None``
    for bool switches); ``extras`` maps parameter keys to parameter names."""

    key: str
    name: str
    param: str | None
    extras: dict[str, str] = field(default_factory=dict)


# In pipeline order: geometric -> photometric -> occlusion.
_SWITCHES: tuple[_Switch, ...] = (
    _Switch("aug_random_crop", "random_crop", "size"),
    _Switch("aug_hflip", "hflip", "p"),
    _Switch("aug_randaugment", "randaugment", None,
            {"aug_randaugment_ops": "num_ops", "aug_randaugment_magnitude": "magnitude"}),
    _Switch("aug_solarize", "solarize", "p"),
    _Switch("aug_grayscale", "grayscale", "p"),
    _Switch("aug_cropout", "cropout", None, {"aug_cropout_n": "n", "aug_cropout_area": "area"}),
    _Switch("aug_missing_frames", "missing_frames", "fraction"),
    _Switch("aug_salt_pepper", "salt_pepper", "amount"),
)

#: Every ``aug_*`` key the config may hold.
CONFIG_KEYS: tuple[str, ...] = tuple(k for s in _SWITCHES for k in (s.key, *s.extras))


def _switch_value(sw: _Switch, value: Any) -> tuple[bool, dict[str, Any]]:
    """(on, params) for the switch key's value."""
    if sw.param is None:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and int(value) in (0, 1)):
            return bool(value), {}
        raise ValueError(f"{sw.key}={value!r} is not allowed; expected true or false")
    if value is None or value is False:
        return False, {}
    if value is True:
        return True, {}  # the paper default of the parameter
    if isinstance(value, numbers.Real) and float(value) == 0.0:
        return False, {}
    return True, {sw.param: value}


def parse_augment_config(config: Mapping[str, Any], make: Callable[..., Any] | None = None) -> list[tuple[str, Any]]:
    """Validate the ``aug_*`` keys of ``config`` and return the enabled augmentations' settings as ``(key, settings)``
    pairs in pipeline order. Keys not starting with ``aug_`` are ignored. ``make(name, **params)`` builds each one
    (default :func:`make_settings`; the tensor ops pass their own factory, whose classes take the same parameters).

    Raises:
        ValueError: an unknown ``aug_*`` key (the message lists the known keys) or a value outside its allowed range
            (the message names the key, the value and the range).
    """
    unknown = sorted(k for k in config if str(k).startswith("aug_") and k not in CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown augmentation key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    enabled: list[tuple[str, Any]] = []
    for sw in _SWITCHES:
        on, params = _switch_value(sw, config.get(sw.key, False))
        for key, param in sw.extras.items():
            if key in config and config[key] is not None:
                params[param] = config[key]
        try:
            # Checked even when off, so a bad parameter key fails now rather than when someone switches it on.
            settings = (make or make_settings)(sw.name, **params)
        except ValueError as err:
            keys = [sw.key] + [k for k in sw.extras if k in config]
            shown = ", ".join(f"{k}={config.get(k, False)!r}" for k in keys)
            raise ValueError(f"{shown}: {err}") from err
        if on:
            enabled.append((sw.key, settings))
    return enabled


def _frame_hw(frame_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(frame_size, numbers.Integral):
        return int(frame_size), int(frame_size)
    height, width = frame_size
    return int(height), int(width)


def crop_output_size(config: Mapping[str, Any], frame_size: int | tuple[int, int]) -> tuple[int, int]:
    """Frame ``(H, W)`` the model sees after the train / eval transform of ``config`` for ``frame_size`` inputs.

    Raises:
        ValueError: invalid config, or a crop larger than the frame (naming ``aug_random_crop``).
    """
    height, width = _frame_hw(frame_size)
    for key, settings in parse_augment_config(config):
        if isinstance(settings, RandomCropSettings):
            try:
                return settings.output_size(height, width)
            except ValueError as err:
                raise ValueError(f"{key}={config[key]!r}: {err}") from err
    return height, width
