"""Frame-index samplers that turn a video of ``num_frames`` frames into a clip.

* :func:`ssts_indices` - Stochastic and Strided Temporal Sampling (SSTS,
  paper 000): a random, temporally ordered subset of ``clip_len`` frames,
  then one random strided view of it.
* :func:`ssts_views` - all ``stride`` strided views of a single draw, for
  ensemble inference (the caller averages their predictions).
* :func:`uniform_indices` - ``count`` evenly spaced frames (deterministic).
* :func:`consecutive_indices` - a run of ``count`` consecutive frames.

Every sampler returns sorted int64 frame indices in ``[0, num_frames)``.
Randomness comes only from the ``numpy.random.Generator`` passed in, so the
same seed gives the same indices.

:data:`SAMPLERS` maps a config name to the sampler function itself. The
functions do not share one signature (``uniform`` takes no ``rng``), so a
caller dispatches with keyword arguments appropriate to the chosen name, e.g.
``get_sampler("ssts")(num_frames, stride=4, rng=rng)`` or
``get_sampler("uniform")(num_frames, count=16)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from trainables.checks import check_int as _check_int
from trainables.names import SAMPLERS as SAMPLER_NAMES

__all__ = [
    "SAMPLERS",
    "consecutive_indices",
    "get_sampler",
    "ssts_indices",
    "ssts_views",
    "uniform_clip_starts",
    "uniform_indices",
]




def _require_rng(rng: np.random.Generator | None) -> np.random.Generator:
    """Return ``rng`` or raise if a stochastic sampler was given none.

    Raises:
        ValueError: If ``rng`` is not a ``numpy.random.Generator``.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"a numpy.random.Generator is required when stochastic=True, got {type(rng).__name__}")
    return rng


def _ssts_draw(
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None,
    clip_len: int,
    stochastic: bool,
) -> NDArray[np.int64]:
    """Validate SSTS arguments and return the sorted ``clip_len``-frame draw.

    Stochastic: ``clip_len`` distinct indices drawn uniformly without
    replacement from ``range(num_frames)`` (one ``rng.choice`` call), sorted
    so that temporal order is kept. Not stochastic: ``0 .. clip_len - 1``.

    Raises:
        ValueError: See :func:`ssts_indices`.
    """
    clip_len = _check_int("clip_len", clip_len, 1)
    num_frames = _check_int("num_frames", num_frames, 0)
    stride = _check_int("stride", stride, 1)
    if stride > clip_len:
        raise ValueError(f"stride must be in [1, clip_len={clip_len}], got {stride}")
    if num_frames < clip_len:
        raise ValueError(f"video has num_frames={num_frames} frames, fewer than clip_len={clip_len}")
    if not stochastic:
        return np.arange(clip_len, dtype=np.int64)
    draw = _require_rng(rng).choice(num_frames, size=clip_len, replace=False)
    return np.sort(draw).astype(np.int64)


def ssts_indices(
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None,
    clip_len: int = 24,
    stochastic: bool = True,
) -> NDArray[np.int64]:
    """Stochastic and Strided Temporal Sampling (SSTS, paper 000).

    Rule:

    1. draw ``clip_len`` of the ``num_frames`` frame indices uniformly
       without replacement and sort them (temporal order kept):
       ``c_0 < c_1 < ... < c_{clip_len-1}``;
    2. draw an offset ``i`` uniformly from ``{0, ..., stride - 1}``;
    3. return ``c_i, c_{i+stride}, c_{i+2*stride}, ...`` (positions
       ``< clip_len``).

    The output has ``len(range(i, clip_len, stride))`` elements - exactly
    ``clip_len / stride`` when ``stride`` divides ``clip_len`` (at 24:
    strides 1, 2, 3, 4, 6, 8, 12 -> 24, 12, 8, 6, 4, 3, 2 frames), otherwise
    it depends on ``i`` (e.g. stride 5: 5 frames for ``i <= 3``, 4 for
    ``i = 4``).

    ``stochastic=False`` is the "no stochasticity" ablation: the draw is the
    first ``clip_len`` frames ``0 .. clip_len - 1`` and ``i = 0``, so the
    result is ``[0, stride, 2*stride, ...]`` and ``rng`` is not used (may be
    None).

    Random stream: one ``rng.choice`` then one ``rng.integers`` call, so a
    given seed always yields the same indices.

    Args:
        num_frames: Number of frames in the video, ``>= clip_len``.
        stride: Temporal stride, ``1 <= stride <= clip_len``.
        rng: Random generator; required when ``stochastic`` is True.
        clip_len: Number of frames in the intermediate draw, ``>= 1``.
        stochastic: Random draw and offset (True) or the deterministic
            ablation (False).

    Returns:
        Sorted, unique int64 indices in ``[0, num_frames)``.

    Raises:
        ValueError: If ``num_frames < clip_len`` (the message names both
            numbers), ``stride < 1`` or ``stride > clip_len``, an argument is
            not an integer, or ``rng`` is missing while ``stochastic`` is True.
    """
    draw = _ssts_draw(num_frames, stride, rng, clip_len, stochastic)
    offset = int(_require_rng(rng).integers(0, stride)) if stochastic else 0
    return draw[offset::stride].copy()


def ssts_views(
    num_frames: int,
    stride: int,
    rng: np.random.Generator | None,
    clip_len: int = 24,
    stochastic: bool = True,
) -> list[NDArray[np.int64]]:
    """All strided views of one SSTS draw, for ensemble inference.

    One draw of ``clip_len`` sorted frames ``c`` is made exactly as in
    :func:`ssts_indices` (or ``0 .. clip_len - 1`` when not stochastic), then
    view ``k`` (``k = 0 .. stride - 1``) is ``c[k::stride]``. The views are
    pairwise disjoint and their union is the draw; the caller averages the
    model's predictions over them.

    Args:
        num_frames: Number of frames in the video, ``>= clip_len``.
        stride: Temporal stride, ``1 <= stride <= clip_len``; also the number
            of views.
        rng: Random generator; required when ``stochastic`` is True.
        clip_len: Number of frames in the draw, ``>= 1``.
        stochastic: Random draw (True) or the first ``clip_len`` frames.

    Returns:
        List of ``stride`` sorted int64 arrays, ordered by offset.

    Raises:
        ValueError: Same conditions as :func:`ssts_indices`.
    """
    draw = _ssts_draw(num_frames, stride, rng, clip_len, stochastic)
    return [draw[k::stride].copy() for k in range(stride)]


def uniform_indices(num_frames: int, count: int) -> NDArray[np.int64]:
    """``count`` evenly spaced frame indices spanning the whole video.

    Formula: ``rint(linspace(0, num_frames - 1, count))`` (NumPy rounding,
    half to even). Because the spacing ``(num_frames - 1) / (count - 1)`` is
    at least 1 when ``count <= num_frames``, the indices are unique. The
    first index is 0 and, for ``count >= 2``, the last is ``num_frames - 1``;
    ``count == 1`` gives ``[0]``.

    Args:
        num_frames: Number of frames in the video, ``>= count``.
        count: Number of indices to return, ``>= 1``.

    Returns:
        Sorted, unique int64 indices in ``[0, num_frames)``.

    Raises:
        ValueError: If ``count < 1`` or ``num_frames < count``.
    """
    count = _check_int("count", count, 1)
    num_frames = _check_int("num_frames", num_frames, 0)
    if num_frames < count:
        raise ValueError(f"video has num_frames={num_frames} frames, fewer than count={count}")
    return np.rint(np.linspace(0, num_frames - 1, count)).astype(np.int64)


def consecutive_indices(
    num_frames: int,
    count: int,
    rng: np.random.Generator | None,
    stochastic: bool = True,
) -> NDArray[np.int64]:
    """A run of ``count`` consecutive frames.

    The start ``s`` is drawn uniformly from ``{0, ..., num_frames - count}``
    (one ``rng.integers`` call); with ``stochastic=False`` it is 0 and ``rng``
    is unused. Result: ``[s, s + 1, ..., s + count - 1]``.

    Args:
        num_frames: Number of frames in the video, ``>= count``.
        count: Run length, ``>= 1``.
        rng: Random generator; required when ``stochastic`` is True.
        stochastic: Random start (True) or start 0 (False).

    Returns:
        Sorted int64 indices in ``[0, num_frames)``.

    Raises:
        ValueError: If ``count < 1``, ``num_frames < count``, or ``rng`` is
            missing while ``stochastic`` is True.
    """
    count = _check_int("count", count, 1)
    num_frames = _check_int("num_frames", num_frames, 0)
    if num_frames < count:
        raise ValueError(f"video has num_frames={num_frames} frames, fewer than count={count}")
    start = int(_require_rng(rng).integers(0, num_frames - count + 1)) if stochastic else 0
    return np.arange(start, start + count, dtype=np.int64)


def uniform_clip_starts(n_frames: int, clip_len: int, clips: int = 2) -> list[int]:
    """First frames of ``clips`` clips spread uniformly over a video (paper 002 averages 2 such clips at inference).

    The first clip starts at frame 0 and the last ends at the video's last frame; the others are evenly spaced between
    (floor of the exact position). A single clip is centred. A video no longer than a clip gives every clip start 0
    (the sampler pads the clip, as in training).

    Args:
        n_frames: frames in the video.
        clip_len: frames one clip spans in the video (frames per clip times the temporal stride, e.g. 16 x 4 = 64).
        clips: how many clips.

    Raises:
        ValueError: ``n_frames < 0``, ``clip_len < 1`` or ``clips < 1``.
    """
    if n_frames < 0 or clip_len < 1 or clips < 1:
        raise ValueError(f"need n_frames >= 0, clip_len >= 1 and clips >= 1, got {n_frames}, {clip_len}, {clips}")
    span = max(n_frames - clip_len, 0)
    if clips == 1:
        return [span // 2]
    return [i * span // (clips - 1) for i in range(clips)]


#: Config name -> sampler function (see the module docstring for dispatch).
SAMPLERS: dict[str, Callable[..., NDArray[np.int64]]] = dict(zip(
    SAMPLER_NAMES, (ssts_indices, uniform_indices, consecutive_indices), strict=True))


def get_sampler(name: str) -> Callable[..., NDArray[np.int64]]:
    """Look up a sampler by its config name.

    Args:
        name: A key of :data:`SAMPLERS` (``"ssts"``, ``"uniform"``,
            ``"consecutive"``); case-sensitive.

    Returns:
        The sampler function.

    Raises:
        ValueError: If ``name`` is unknown; the message lists valid names.
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(sorted(SAMPLERS))}") from None
