"""Input-shape rules of every shipped backbone, of the clip samplers and of ``data prepare``, without torch.

The sweep's driver imports this module before Ray starts (``cluster.preflight``) to refuse a configuration whose clips a
backbone cannot take, instead of letting every trial fail on its first batch. The rules are read from the models'
``forward`` code and checked against a real forward pass of each backbone at tiny size (``tests/test_shapes.py``):

* ``video_vit``, ``video_vit_tiny`` (:class:`trainables.models.video_vit.VideoViT`): H and W multiples of
  ``patch_size`` (16; 8 for the tiny variant), else ``ValueError`` in ``forward_features``. Any frame count runs: a
  count that is not a multiple of ``tubelet_size`` (2) gets its last frame repeated up to the next multiple.
* ``tpsbt``, ``tpsbt_base``, ``tpsbt_tiny`` (:class:`trainables.models.tpsbt.TPSBT`): the same patch rule and tubelet
  padding; besides, an odd number of temporal slices before each later stage's stride-2 temporal convolution gets its
  last slice repeated.
* ``cnn_rnn``, ``i3d``, ``mimamo`` (a timm 2D CNN per frame, inflated to 3D for ``i3d`` with temporal size 1 in every
  pool): ResNets (padded convolutions and pools) take any size; VGGs (five 2x2 max-pools without padding) and
  ConvNeXts (a 4x4 stride-4 stem, then three 2x2 stride-2 downsamplings, none padded) need H and W >= 32, else the
  pooling or the convolution raises. Sizes that do not divide evenly run; the unpadded strides drop the last rows or
  columns. Inflated (``i3d``), the ResNets whose shortcuts downsample with a 2x2 average pool (timm's ``test_resnet``
  and the ``resnet*d`` variants) need H and W >= 17: ``AvgPool3d`` refuses an input smaller than its kernel where
  ``AvgPool2d`` in ceil mode takes a 1x1 one, and layer 4's pool sees ``ceil(H / 16)`` pixels. A CNN name outside
  these families is not checked here (``Verdict.checked`` is False): timm has hundreds.
* ``mimamo``: a clip of one frame is refused: the phase difference of its only frame comes out empty and the two
  streams no longer concatenate (``RuntimeError``). Besides the CNN, the steerable pyramid halves (rounding up) the
  phase input's spectrum ``pyramid_levels - 1`` times (of the 2H x 2W mirror-extended input, each level then cropped
  to its quadrant, unless ``pyramid_extension`` is off) and needs the coarsest level at least 2x2; the phase input
  is the frame, or ``phase_size`` square when set.
* ``conv3d_resnet_gru``: padded convolutions in space and time: any H, W and frame count.
* The time axis of ``cnn_rnn``, ``i3d`` (inflation never strides in time and pads to keep T), ``mimamo`` and
  ``conv3d_resnet_gru`` takes any frame count >= 1.

Samplers (``trainables.data.views.ClipSpec``): SSTS keeps ``len(range(i, clip_len, stride))`` frames for a random
offset ``i``, so a stride above ``clip_len`` is refused by the sampler, and a stride that does not divide ``clip_len``
gives clips of two lengths, which a training batch of more than one clip cannot stack.

``data prepare``: :data:`MIN_FRAME_SIDE`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from trainables.backbone_catalog import SHIPPED

ACCEPTED, PADDED, REFUSED = "accepted", "padded", "refused"

#: Trial settings whose values enter a shape rule: the pre-flight checks every combination of their finite values.
#: ``registration`` selects the dataset index (and so the cached face size) when the sweep has one per setting.
SHAPE_KEYS = ("backbone", "cnn", "registration", "aug_random_crop", "sampler", "clip_len", "ssts_stride", "num_frames",
              "batch_size", "pyramid_levels", "pyramid_extension")

#: Smallest frame side (pixels) ``data prepare`` decodes and searches for faces in. Judgment call, from what was
#: measured here: decord 0.6 fails to decode mp4v videos of width 8, 16, 24, 48 and 72 (``DECORDArrayCopyFromTo: The
#: size must exactly match``; every width from 80 to 320 decoded), OpenCV's Haar detector finds no face smaller than its
#: 30-pixel minimum, and S3FD's frames are padded to 64 pixels anyway. A frame of 64 pixels, what ``data synth`` writes
#: by default in the tests, decodes and crops.
MIN_FRAME_SIDE = 64


@dataclass(frozen=True)
class Verdict:
    """What a backbone (or sampler) does with an input shape.

    Attributes:
        status: ``accepted`` (runs as it is), ``padded`` (runs after the model pads it: ``reason`` says how) or
            ``refused`` (the model raises: ``reason`` says why and what is allowed).
        reason: one line; empty when accepted.
        keys: the trial settings that can change the outcome (what a refused shape's error names).
        checked: False when no rule is known (a CNN outside the known families, a backbone registered elsewhere).
        tokens: tokens after a video transformer's last block (``forward_features``: (B, tokens, E)), else None.
    """

    status: str
    reason: str = ""
    keys: tuple[str, ...] = ()
    checked: bool = True
    tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != REFUSED


#: The shape families: a video transformer's patches (``video_vit``), the same pooled in time by stages (``tpsbt``),
#: a 2D CNN per frame (``cnn_rnn``), inflated to 3D (``i3d``), beside a steerable pyramid (``mimamo``), or any shape.
FAMILIES = ("patches", "pooled_patches", "cnn", "inflated_cnn", "cnn_pyramid", "any")
#: name -> (family, the constructor defaults and pins that enter the rule), from the one catalog of backbones.
BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {name: item.shape for name, item in SHIPPED.items()}

# timm CNN families by name -> the smallest H and W they take (see the module docstring).
_CNN_MIN_SIDE = ((re.compile(r"^(test_)?(resnet|resnext|seresnet|seresnext|wide_resnet|resnetv2)"), 1),
                 (re.compile(r"^vgg"), 32),
                 (re.compile(r"^(test_)?convnext"), 32))


_AVG_DOWN = re.compile(r"^(test_resnet|(se)?resne(t|xt)\d+d)")


def cnn_min_side(cnn: str, inflated: bool = False) -> int | None:
    """The smallest frame side timm CNN ``cnn`` takes (``inflated``: as ``i3d`` inflates it), or None when its family
    is not known here."""
    if inflated and _AVG_DOWN.match(cnn):
        return 17
    for pattern, side in _CNN_MIN_SIDE:
        if pattern.match(cnn):
            return side
    return None


def pyramid_spectrum_shapes(height: int, width: int, levels: int, extension: bool = True) -> list[tuple[int, int]]:
    """(h, w) of every steerable-pyramid level's spectrum: it starts at the frame, or at 2H x 2W with the authors'
    symmetric extension, and halves (rounding up) from level to level."""
    spectrum = [(2 * height, 2 * width) if extension else (height, width)]
    for _ in range(levels - 1):
        h, w = spectrum[-1]
        spectrum.append(((h + 1) // 2, (w + 1) // 2))
    return spectrum


def pyramid_level_shapes(height: int, width: int, levels: int, extension: bool = True) -> list[tuple[int, int]]:
    """(h, w) of every level the steerable pyramid returns (``ComplexSteerablePyramid.level_shapes``): its spectrum's
    shape, or with the extension the spectrum's top-left quadrant (``h_l // 2``), as the authors crop."""
    spectrum = pyramid_spectrum_shapes(height, width, levels, extension)
    return [(h // 2, w // 2) for h, w in spectrum] if extension else spectrum


def input_verdict(backbone: str, height: int, width: int, frames: int,
                  model: Mapping[str, Any] | None = None) -> Verdict:
    """What backbone ``backbone`` does with clips of ``frames`` frames of ``height`` x ``width``.

    Args:
        model: the constructor arguments the trial passes (``TrialConfig.model_kwargs()``: ``cnn``,
            ``pyramid_levels`` ...); the variant's defaults fill the rest.
    """
    if backbone not in BACKBONES:
        return Verdict(ACCEPTED, f"no shape rule for backbone {backbone}", checked=False)
    family, defaults = BACKBONES[backbone]
    args = {**defaults, **{k: v for k, v in (model or {}).items() if v is not None}}
    if height < 1 or width < 1 or frames < 1:
        return Verdict(REFUSED, f"an input of {frames} frames of {height}x{width} is empty", ("backbone",))
    if family in ("patches", "pooled_patches"):
        return _transformer(backbone, family, height, width, frames, args)
    if family == "any":
        return Verdict(ACCEPTED, keys=("backbone",))
    verdict = _cnn(backbone, args["cnn"], height, width, inflated=family == "inflated_cnn")
    if family == "cnn_pyramid" and frames < 2:
        return Verdict(REFUSED, f"backbone {backbone} takes the phase difference of consecutive frames and refuses "
                                f"clips of {frames} frame; allowed: 2 frames or more (num_frames, or clip_len / "
                                "ssts_stride)", ("backbone", "num_frames", "clip_len", "ssts_stride"))
    if family == "cnn_pyramid" and verdict.ok:
        return _pyramid(backbone, height, width, args, verdict)
    return verdict


def _transformer(backbone: str, family: str, height: int, width: int, frames: int, args: dict) -> Verdict:
    patch, tubelet = int(args["patch_size"]), int(args["tubelet_size"])
    keys = ("backbone", "aug_random_crop")
    if height % patch or width % patch:
        return Verdict(REFUSED, f"input {height}x{width} is not a multiple of patch_size {patch} for backbone "
                                f"{backbone}; allowed: height and width multiples of {patch} (the cached face size, "
                                f"or aug_random_crop)", keys)
    slices = math.ceil(frames / tubelet)
    padding = []
    if frames % tubelet:
        padding.append(f"{frames} frames padded to {slices * tubelet} (last frame repeated) for tubelet_size {tubelet}")
    if family == "pooled_patches":
        counts = [slices]
        stages = len(args["depths"]) if "depths" in args else int(args["stages"])
        for _ in range(stages - 1):
            if counts[-1] % 2:
                padding.append(f"{counts[-1]} temporal slices padded to {counts[-1] + 1} (last slice repeated) "
                               "before a temporal stride-2 convolution")
            counts.append((counts[-1] + 1) // 2)
        slices = counts[-1]
    tokens = slices * (height // patch) * (width // patch)
    return Verdict(PADDED if padding else ACCEPTED, "; ".join(padding), keys, tokens=tokens)


def _cnn(backbone: str, cnn: str, height: int, width: int, inflated: bool = False) -> Verdict:
    side = cnn_min_side(cnn, inflated)
    keys = ("backbone", "cnn", "aug_random_crop")
    if side is None:
        return Verdict(ACCEPTED, f"no shape rule for cnn {cnn}", keys, checked=False)
    if min(height, width) < side:
        return Verdict(REFUSED, f"input {height}x{width} is smaller than the {side}x{side} cnn {cnn} of backbone "
                                f"{backbone} takes (its unpadded pooling or strides would leave no pixel); allowed: "
                                f"height and width >= {side}", keys)
    return Verdict(ACCEPTED, keys=keys)


def _pyramid(backbone: str, height: int, width: int, args: dict, spatial: Verdict) -> Verdict:
    levels = int(args["pyramid_levels"])
    phase = args.get("phase_size")
    h, w = (int(phase), int(phase)) if phase else (height, width)
    extension = bool(args.get("pyramid_extension", True))
    coarsest = pyramid_level_shapes(h, w, levels, extension)[-1]
    keys = tuple(dict.fromkeys((*spatial.keys, "pyramid_levels", "pyramid_extension")))
    if min(coarsest) < 2:
        source = f"phase_size {phase}" if phase else f"input {height}x{width}"
        return Verdict(REFUSED, f"{source} is too small for pyramid_levels {levels} of backbone {backbone}: its "
                                f"coarsest level would be {coarsest[0]}x{coarsest[1]}, under 2x2; allowed: "
                                f"pyramid_levels <= {max_pyramid_levels(h, w, extension)}", keys)
    return Verdict(spatial.status, spatial.reason, keys, checked=spatial.checked)


def max_pyramid_levels(height: int, width: int, extension: bool = True) -> int:
    """The most steerable-pyramid levels an image of ``height`` x ``width`` allows (0 if none)."""
    levels = 0
    while min(pyramid_level_shapes(height, width, levels + 1, extension)[-1]) >= 2 and levels < 64:
        levels += 1
    return levels


def clip_frames(sampler: str, clip_len: int, ssts_stride: int = 1, num_frames: int | None = None,
                batch_size: int = 1) -> tuple[tuple[int, ...], Verdict]:
    """The frame counts a sampler's clips hold, and whether training batches of them can be built.

    Returns:
        (every frame count a clip can have, the verdict): SSTS keeps ``len(range(i, clip_len, stride))`` frames for
        offsets ``i`` in ``0 .. stride - 1``; the other samplers ``num_frames`` (default ``clip_len``).
    """
    if sampler != "ssts":
        return (int(num_frames or clip_len),), Verdict(ACCEPTED, keys=("sampler", "num_frames", "clip_len"))
    keys = ("ssts_stride", "clip_len")
    if ssts_stride > clip_len:
        return (), Verdict(REFUSED, f"ssts_stride {ssts_stride} is larger than clip_len {clip_len}: SSTS keeps every "
                                    f"ssts_stride-th of clip_len frames; allowed: ssts_stride <= clip_len", keys)
    counts = tuple(sorted({len(range(i, clip_len, ssts_stride)) for i in range(ssts_stride)}, reverse=True))
    if len(counts) > 1 and batch_size > 1:
        divisors = [s for s in range(1, clip_len + 1) if clip_len % s == 0]
        return counts, Verdict(REFUSED, f"ssts_stride {ssts_stride} does not divide clip_len {clip_len}: clips hold "
                                        f"{' or '.join(map(str, counts))} frames, and a batch of batch_size "
                                        f"{batch_size} clips of different lengths cannot be stacked; allowed: "
                                        f"ssts_stride in {', '.join(map(str, divisors))} (divisors of clip_len), or "
                                        "batch_size 1", (*keys, "batch_size"))
    return counts, Verdict(ACCEPTED, keys=keys)


def frame_verdict(height: int, width: int) -> Verdict:
    """Whether ``data prepare`` takes a video whose frames are ``height`` x ``width`` (see :data:`MIN_FRAME_SIDE`)."""
    if min(height, width) < MIN_FRAME_SIDE:
        return Verdict(REFUSED, f"frames of {width}x{height} pixels (width x height) are smaller than the "
                                f"{MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} the decoder and the face detectors work on; "
                                f"a face there is too small to find and crop")
    return Verdict(ACCEPTED)
