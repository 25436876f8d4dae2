"""Regression metrics for continuous emotion recognition (valence / arousal).

All functions take plain array-likes and return Python floats (or a dict of
floats), so they can be used both in evaluation loops and in reporting code.
They are NumPy except :func:`ccc`, which hands its float64 arrays to the one
CCC implementation, :func:`trainables.objectives.concordance.masked_ccc`
(torch, shared with the training loss), so the metric and the loss cannot
drift apart.

Conventions shared by every pairwise metric (:func:`ccc`, :func:`pcc`,
:func:`rmse`, :func:`mae`, :func:`mape`):

* inputs are 1-D, of equal length ``N >= 2`` and contain only finite values;
  anything else raises :class:`ValueError` whose message says what was wrong;
* moments are *population* moments (divide by ``N``, not ``N - 1``), which is
  what Lin (1989) uses for the concordance correlation coefficient and what
  the AVEC / ABAW challenge evaluation scripts use;
* the result is never NaN for valid input: degenerate cases (a constant
  series) have an explicit, documented value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from trainables.data.labels import from_unit
from trainables.objectives.concordance import masked_ccc

__all__ = ["ccc", "pcc", "rmse", "mae", "mape", "MAPE_EPS", "regression_report", "per_video_report", "to_native"]

#: Floor of the MAPE denominator on the [-1, 1] label scale (see :func:`mape`).
MAPE_EPS = 0.1


def _as_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate and convert a (target, prediction) pair to float64 vectors.

    Args:
        y_true: Ground-truth values, 1-D array-like.
        y_pred: Predicted values, 1-D array-like.

    Returns:
        ``(t, p)`` as contiguous float64 arrays of shape ``(N,)``.

    Raises:
        ValueError: If either input is not 1-D, the lengths differ, ``N < 2``,
            or any value is NaN / infinite. The message names the offending
            argument.
    """
    # float64 throughout: the metrics are reported to 3-4 decimals and are
    # often computed on tens of thousands of frames, where float32 sums drift.
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {t.shape}")
    if p.ndim != 1:
        raise ValueError(f"y_pred must be 1-D, got shape {p.shape}")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"length mismatch: y_true has {t.shape[0]} values, y_pred has {p.shape[0]}")
    if t.shape[0] < 2:
        raise ValueError(f"need at least 2 values, got {t.shape[0]}")
    if not np.all(np.isfinite(t)):
        raise ValueError("y_true contains non-finite values (NaN or inf)")
    if not np.all(np.isfinite(p)):
        raise ValueError("y_pred contains non-finite values (NaN or inf)")
    return t, p


def _scaled_errors(t: NDArray[np.float64], p: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """Errors ``t - p`` written as ``m * d`` with ``max|d| = 1``.

    Returns ``(d, m)``; ``m = max|t - p|`` (possibly ``inf`` when the true
    maximum error exceeds the float64 range) and ``d`` is all zeros when
    ``m == 0``. Averaging ``d**2`` / ``|d|`` and multiplying by ``m`` avoids
    both the underflow of tiny squared errors (``(1e-200)**2 == 0``) and the
    overflow of huge ones.
    """
    with np.errstate(over="ignore"):
        diff = t - p
    if np.all(np.isfinite(diff)):
        m = float(np.max(np.abs(diff)))
        return (diff / m if m > 0 else diff), m
    # t - p overflowed: halve first (|t/2 - p/2| <= float64 max), then rescale.
    half = t / 2 - p / 2
    m_half = float(np.max(np.abs(half)))
    with np.errstate(over="ignore"):
        return half / m_half, 2.0 * m_half


def _is_constant(x: NDArray[np.float64]) -> bool:
    """Return True when every element equals the first one exactly.

    An exact comparison is used instead of ``var == 0`` because the variance
    of a constant float series can come out as a tiny non-zero number (the
    mean is rounded), which would turn a 0/0 into an arbitrary ratio.
    """
    return bool(np.all(x == x[0]))


def ccc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation coefficient (Lin, 1989), computed by :func:`masked_ccc`.

    Formula (population moments, ``N`` = number of samples)::

        mu_t = mean(t), mu_p = mean(p)
        var_t = mean((t - mu_t)^2), var_p = mean((p - mu_p)^2)
        cov = mean((t - mu_t) * (p - mu_p))
        CCC = 2 * cov / (var_t + var_p + (mu_t - mu_p)^2)

    Edge cases:

    * **A constant prediction scores 0.0, always** - including when the
      target is the same constant (where the formula is 0/0). A model that
      outputs a constant has captured no temporal variation, and giving it
      1.0 in the degenerate case would reward collapse on flat clips.
    * A constant target with a non-constant prediction gives ``cov = 0`` and
      a positive denominator, hence 0.0 from the formula itself.
    * The result is clipped to ``[-1, 1]`` to remove rounding overshoot.
    * Both series are first divided by their common max magnitude (CCC is
      invariant to that), so values near 1e308 or 1e-300 cannot overflow
      or underflow into NaN.
    * Computed in float64 with ``eps = 0`` (the exact formula).

    Args:
        y_true: Ground truth, 1-D, finite, length ``N >= 2``.
        y_pred: Prediction, 1-D, finite, same length as ``y_true``.

    Returns:
        CCC in ``[-1, 1]``; 1 for perfect agreement, -1 for ``p = 2*mean - t``
        style perfect disagreement (e.g. ``p = -t`` for a zero-mean ``t``).

    Raises:
        ValueError: Non 1-D input, length mismatch, ``N < 2`` or non-finite
            values (the message says which).
    """
    t, p = _as_pair(y_true, y_pred)
    # The one CCC implementation (torch); from_numpy shares the float64 buffers, so nothing is copied.
    value = masked_ccc(torch.from_numpy(t), torch.from_numpy(p)).item()
    return float(np.clip(value, -1.0, 1.0))


def pcc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson correlation coefficient with population moments.

    Formula::

        PCC = cov(t, p) / sqrt(var_t * var_p)

    (the ``1/N`` factors cancel, so population vs. sample moments does not
    matter here; population moments are used for consistency with
    :func:`ccc`).

    Edge cases: if either series is constant the correlation is undefined
    (0/0); it is defined as 0.0 here, so that a constant prediction scores 0
    as in :func:`ccc`. The result is clipped to ``[-1, 1]``.

    Args:
        y_true: Ground truth, 1-D, finite, length ``N >= 2``.
        y_pred: Prediction, 1-D, finite, same length as ``y_true``.

    Returns:
        PCC in ``[-1, 1]``.

    Raises:
        ValueError: Non 1-D input, length mismatch, ``N < 2`` or non-finite
            values (the message says which).
    """
    t, p = _as_pair(y_true, y_pred)
    if _is_constant(p) or _is_constant(t):
        return 0.0
    # PCC is invariant to rescaling each series separately: normalise by the
    # max magnitude before centring (no overflow in the mean) and again after
    # centring (no underflow of the variances), so the ratio is always finite.
    t = t / np.max(np.abs(t))
    p = p / np.max(np.abs(p))
    dt = t - t.mean()
    dp = p - p.mean()
    dt = dt / np.max(np.abs(dt))
    dp = dp / np.max(np.abs(dp))
    var_t = float(np.mean(dt * dt))
    var_p = float(np.mean(dp * dp))
    cov = float(np.mean(dt * dp))
    return float(np.clip(cov / np.sqrt(var_t * var_p), -1.0, 1.0))


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error: ``sqrt(mean((t - p)^2))``.

    Args:
        y_true: Ground truth, 1-D, finite, length ``N >= 2`` (the same input
            contract as :func:`ccc`, so all metrics accept exactly the same
            inputs).
        y_pred: Prediction, 1-D, finite, same length as ``y_true``.

    Returns:
        RMSE ``>= 0``; 0.0 iff the series are identical. Computed on jointly
        rescaled inputs, so it is finite unless the true value itself exceeds
        the float64 range (then ``inf``, never NaN).

    Raises:
        ValueError: Non 1-D input, length mismatch, ``N < 2`` or non-finite
            values (the message says which).
    """
    t, p = _as_pair(y_true, y_pred)
    d, m = _scaled_errors(t, p)
    if m == 0.0:
        return 0.0
    with np.errstate(over="ignore"):  # inf is the correct answer past float64 max
        return float(m * np.sqrt(np.mean(d * d)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error: ``mean(|t - p|)``.

    Args:
        y_true: Ground truth, 1-D, finite, length ``N >= 2`` (the same input
            contract as :func:`ccc`).
        y_pred: Prediction, 1-D, finite, same length as ``y_true``.

    Returns:
        MAE ``>= 0``; 0.0 iff the series are identical (finite unless the
        true value exceeds the float64 range, never NaN).

    Raises:
        ValueError: Non 1-D input, length mismatch, ``N < 2`` or non-finite
            values (the message says which).
    """
    t, p = _as_pair(y_true, y_pred)
    d, m = _scaled_errors(t, p)
    if m == 0.0:
        return 0.0
    with np.errstate(over="ignore"):  # inf is the correct answer past float64 max
        return float(m * np.mean(np.abs(d)))


def mape(y_true: ArrayLike, y_pred: ArrayLike, eps: float = MAPE_EPS) -> float:
    """Mean absolute percentage error with a floor on the denominator.

    Formula (a fraction; multiply by 100 for percent)::

        MAPE = mean( |p - t| / max(|t|, eps) )

    Why the floor: valence / arousal are centred on neutral = 0, and neutral
    steps are the most frequent ones, so the textbook ``|p - t| / |t|``
    (paper 003, Eq. 5) divides by values at or near 0 and is dominated by
    (or infinite on) a handful of neutral steps. With ``eps = 0.1`` on the
    ``[-1, 1]`` scale (5% of the range), a step whose label is within 0.1 of
    neutral is weighted as if its label were 0.1, i.e. each term is at most
    ``10 * |error|``; for ``|t| >= eps`` it is the usual relative error.
    The denominator depends on the target only (not symmetric in ``t`` and
    ``p``), so over-prediction is not rewarded as in symmetric variants.
    On a native scale use an ``eps`` scaled the same way (see
    :func:`regression_report`, which passes ``eps * (high - low) / 2``).

    Args:
        y_true: Ground truth, 1-D, finite, length ``N >= 2`` (the same input
            contract as :func:`ccc`).
        y_pred: Prediction, 1-D, finite, same length as ``y_true``.
        eps: Denominator floor, finite and > 0.

    Returns:
        MAPE ``>= 0`` as a fraction; 0.0 iff the series are identical.

    Raises:
        ValueError: Non 1-D input, length mismatch, ``N < 2``, non-finite
            values, or ``eps <= 0``.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    t, p = _as_pair(y_true, y_pred)
    with np.errstate(over="ignore"):  # inf is the correct answer past float64 max
        return float(np.mean(np.abs(p - t) / np.maximum(np.abs(t), eps)))


ScaleSpec = tuple[float, float] | Sequence[tuple[float, float]] | Mapping[str, tuple[float, float]]


def to_native(y: ArrayLike, low: float, high: float) -> NDArray[np.float64]:
    """Map values from the training scale ``[-1, 1]`` to a native scale ``[low, high]``.

    The inverse of the per-dataset rescaling to ``[-1, 1]``, i.e.
    :func:`trainables.data.labels.from_unit` (``y_native = low + (y + 1) * (high - low) / 2``)
    with the scale checked first. NaN stays NaN.

    Raises:
        ValueError: If ``low`` / ``high`` are not finite or ``high <= low``.
    """
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"native scale must be finite with high > low, got ({low}, {high})")
    return from_unit(np.asarray(y, dtype=np.float64), (float(low), float(high)))


def _native_scales(scale: ScaleSpec | None, names: list[str]) -> dict[str, tuple[float, float]]:
    """Resolve the ``scale`` argument of :func:`regression_report` to ``{dim: (low, high)}``."""
    if scale is None:
        return {}
    if isinstance(scale, Mapping):
        unknown = sorted(set(scale) - set(names))
        if unknown:
            raise ValueError(f"scale names unknown dimension(s) {unknown}; dims are {names}")
        pairs = {str(k): tuple(v) for k, v in scale.items()}
    else:
        items = list(scale)  # type: ignore[arg-type]
        if len(items) == 2 and all(isinstance(v, (int, float, np.number)) for v in items):
            pairs = {name: (items[0], items[1]) for name in names}
        else:
            if len(items) != len(names):
                raise ValueError(f"scale must be one (low, high) pair or one pair per dimension ({len(names)}), "
                                 f"got {len(items)}")
            pairs = {name: tuple(v) for name, v in zip(names, items)}
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        if name not in pairs:
            continue
        pair = pairs[name]
        if len(pair) != 2:
            raise ValueError(f"scale of {name!r} must be a (low, high) pair, got {pair}")
        low, high = float(pair[0]), float(pair[1])
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"scale of {name!r} must be finite with high > low, got ({low}, {high})")
        out[name] = (low, high)
    return out


def _validated_2d(y_true: ArrayLike, y_pred: ArrayLike, dims: Sequence[str]) -> tuple[
        NDArray[np.float64], NDArray[np.float64], list[str]]:
    """Shared checks of :func:`regression_report` / :func:`per_video_report`."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    names = list(dims)
    if t.ndim != 2:
        raise ValueError(f"y_true must be 2-D (N, D), got shape {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"y_pred must be 2-D (N, D), got shape {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {t.shape} vs y_pred {p.shape}")
    if not names:
        raise ValueError("dims must name at least one dimension")
    if len(set(names)) != len(names):
        raise ValueError(f"dims must be unique, got {names}")
    if t.shape[1] != len(names):
        raise ValueError(f"inputs have D={t.shape[1]} columns but dims has {len(names)} names: {names}")
    if np.any(np.isinf(t)):
        raise ValueError("y_true contains infinite values (only NaN may mark unannotated steps)")
    return t, p, names


def regression_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    dims: Sequence[str] = ("valence", "arousal"),
    scale: ScaleSpec | None = None,
    include_mape: bool = False,
    mape_eps: float = MAPE_EPS,
) -> dict[str, float]:
    """Per-dimension CCC / PCC / RMSE / MAE (optionally MAPE, native scale) plus the mean CCC.

    For each dimension ``d`` (column ``j`` of the inputs) the rows where
    ``y_true[:, j]`` is NaN are dropped **for that dimension only** - NaN marks
    an unannotated time step (e.g. frames the annotators skipped, or the
    ``-5`` sentinel of Aff-Wild2 after conversion to NaN). The remaining rows
    are scored with :func:`ccc`, :func:`pcc`, :func:`rmse` and :func:`mae`.

    Returned keys (in this order): for each dim ``ccc_<dim>``, ``pcc_<dim>``,
    ``rmse_<dim>``, ``mae_<dim>`` (and ``mape_<dim>`` if ``include_mape``);
    then ``ccc_mean`` = arithmetic mean of the per-dimension CCCs (the usual
    challenge score, e.g. ``(CCC_V + CCC_A)/2``); then, for each dim with a
    native scale, ``ccc_<dim>_native``, ``pcc_<dim>_native``,
    ``rmse_<dim>_native``, ``mae_<dim>_native``, ``mape_<dim>_native``.

    Native scale: both series are mapped with :func:`to_native`
    (``y -> low + (y + 1)(high - low)/2``, the same affine map for target and
    prediction). CCC and PCC are invariant under one common affine map with
    positive slope (every moment of the CCC formula scales by the squared
    slope), so ``ccc_<dim>_native == ccc_<dim>`` up to rounding; RMSE and MAE
    scale by ``(high - low) / 2``; MAPE is recomputed on the native values
    with the floor ``mape_eps * (high - low) / 2`` (the same fraction of the
    range as on ``[-1, 1]``) - it is *not* scale-invariant, because the
    offset ``low`` moves the denominators (e.g. on a 1..9 scale no label is
    near 0).

    Args:
        y_true: Ground truth of shape ``(N, D)``; NaN = unannotated. Infinite
            values are rejected (they are never a legitimate annotation).
        y_pred: Predictions of shape ``(N, D)``. Must be finite on every row
            that is kept (a NaN prediction at an unannotated step is allowed
            and ignored).
        dims: Names of the ``D`` columns, unique and non-empty, used as key
            suffixes. Defaults to ``("valence", "arousal")``.
        scale: Native label scale: one ``(low, high)`` pair for every
            dimension, a sequence of one pair per dimension, or a mapping
            ``{dim: (low, high)}`` (dimensions left out get no native keys).
            None (default) adds no native keys.
        include_mape: Also report ``mape_<dim>`` on the ``[-1, 1]`` scale.
        mape_eps: Denominator floor of :func:`mape` on the ``[-1, 1]`` scale.

    Returns:
        Dict of Python floats as described above.

    Raises:
        ValueError: If the inputs are not 2-D, their shapes differ, ``D`` does
            not equal ``len(dims)``, ``dims`` is empty or has duplicates,
            ``y_true`` contains infinities, a dimension has fewer than 2
            annotated rows, a kept prediction is non-finite, or ``scale`` is
            malformed (``high <= low``, wrong count, unknown name). The
            message names the dimension where relevant.
    """
    t, p, names = _validated_2d(y_true, y_pred, dims)
    scales = _native_scales(scale, names)

    report: dict[str, float] = {}
    native: dict[str, float] = {}
    cccs: list[float] = []
    for j, name in enumerate(names):
        keep = ~np.isnan(t[:, j])
        tj = t[keep, j]
        pj = p[keep, j]
        if tj.shape[0] < 2:
            raise ValueError(f"dimension {name!r} has {tj.shape[0]} annotated rows, need at least 2")
        if not np.all(np.isfinite(pj)):
            raise ValueError(f"y_pred has non-finite values on annotated rows of dimension {name!r}")
        c = ccc(tj, pj)
        cccs.append(c)
        report[f"ccc_{name}"] = c
        report[f"pcc_{name}"] = pcc(tj, pj)
        report[f"rmse_{name}"] = rmse(tj, pj)
        report[f"mae_{name}"] = mae(tj, pj)
        if include_mape:
            report[f"mape_{name}"] = mape(tj, pj, eps=mape_eps)
        if name in scales:
            low, high = scales[name]
            tn, pn = to_native(tj, low, high), to_native(pj, low, high)
            native[f"ccc_{name}_native"] = ccc(tn, pn)
            native[f"pcc_{name}_native"] = pcc(tn, pn)
            native[f"rmse_{name}_native"] = rmse(tn, pn)
            native[f"mae_{name}_native"] = mae(tn, pn)
            native[f"mape_{name}_native"] = mape(tn, pn, eps=mape_eps * (high - low) / 2.0)
    report["ccc_mean"] = float(np.mean(cccs))
    report.update(native)
    return report


def per_video_report(
    videos: Mapping[str, tuple[ArrayLike, ArrayLike]],
    dims: Sequence[str] = ("valence", "arousal"),
) -> dict[str, float]:
    """Mean over videos of the per-video CCC / PCC / RMSE / MAE.

    The protocol's headline numbers are *global* (all label steps of all
    videos concatenated, :func:`regression_report`); this is the companion
    "mean of per-video scores", which weights every video equally and
    penalises models that only get the between-video offsets right.

    For each video and dimension the unannotated steps (NaN target) are
    dropped; a (video, dimension) with fewer than 2 annotated steps is
    skipped for that dimension and counted. Keys, per dim:
    ``ccc_<dim>_per_video``, ``pcc_<dim>_per_video``,
    ``rmse_<dim>_per_video``, ``mae_<dim>_per_video`` (arithmetic means over
    the scored videos), ``n_videos_<dim>`` (scored) and
    ``n_videos_skipped_<dim>``; then ``ccc_mean_per_video`` = mean of the
    per-dimension ``ccc_<dim>_per_video``. All values are floats (counts
    too, for metric loggers).

    Edge cases: a dimension with no scored video gets NaN for its four
    means (and ``ccc_mean_per_video`` is the mean over the other
    dimensions, NaN if none); an empty ``videos`` mapping raises.

    Args:
        videos: ``{video_id: (y_true (T, D), y_pred (T, D))}``; NaN in
            ``y_true`` = unannotated.
        dims: Names of the ``D`` columns.

    Returns:
        Dict of floats as described above.

    Raises:
        ValueError: If ``videos`` is empty, or for a video with the input
            errors of :func:`regression_report` (bad shapes, infinite
            targets, non-finite predictions on annotated steps); the message
            names the video.
    """
    if not videos:
        raise ValueError("videos is empty")
    names = list(dims)
    scores: dict[str, dict[str, list[float]]] = {n: {"ccc": [], "pcc": [], "rmse": [], "mae": []} for n in names}
    skipped = dict.fromkeys(names, 0)
    for vid, pair in videos.items():
        try:
            t, p, _ = _validated_2d(pair[0], pair[1], names)
        except ValueError as exc:
            raise ValueError(f"video {vid!r}: {exc}") from exc
        for j, name in enumerate(names):
            keep = ~np.isnan(t[:, j])
            tj, pj = t[keep, j], p[keep, j]
            if tj.shape[0] < 2:
                skipped[name] += 1
                continue
            if not np.all(np.isfinite(pj)):
                raise ValueError(f"video {vid!r}: y_pred has non-finite values on annotated rows of {name!r}")
            scores[name]["ccc"].append(ccc(tj, pj))
            scores[name]["pcc"].append(pcc(tj, pj))
            scores[name]["rmse"].append(rmse(tj, pj))
            scores[name]["mae"].append(mae(tj, pj))

    report: dict[str, float] = {}
    dim_cccs: list[float] = []
    for name in names:
        for metric in ("ccc", "pcc", "rmse", "mae"):
            vals = scores[name][metric]
            report[f"{metric}_{name}_per_video"] = float(np.mean(vals)) if vals else math.nan
        report[f"n_videos_{name}"] = float(len(scores[name]["ccc"]))
        report[f"n_videos_skipped_{name}"] = float(skipped[name])
        if scores[name]["ccc"]:
            dim_cccs.append(report[f"ccc_{name}_per_video"])
    report["ccc_mean_per_video"] = float(np.mean(dim_cccs)) if dim_cccs else math.nan
    return report
