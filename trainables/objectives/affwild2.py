"""Aff-Wild2 valence / arousal evaluation rules (SPEC 004, paper 004 section III.C).

* ``-5`` in an annotation file means "not annotated": that value is excluded from training and from every metric.
  The label adapter (:func:`trainables.prepare.adapters.read_affwild2_va`) already turns it into NaN per value, and
  the metrics drop NaN targets per dimension; :func:`scored_mask` accepts either spelling (raw ``-5`` or NaN).
* Frames where no face was detected get no model prediction: at the start of a video (before the first face) the
  prediction is ``-5`` (not scored), every later face-less frame repeats the previous prediction
  (:func:`fill_faceless`).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from trainables.prepare.adapters import AFFWILD2_MISSING

__all__ = ["AFFWILD2_MISSING", "fill_faceless", "scored_mask"]


def scored_mask(labels: ArrayLike) -> np.ndarray:
    """Boolean mask of the label values that are scored: not ``-5`` and not NaN (same shape as ``labels``).

    Per value, as the adapter and the metrics treat it: a step with valence annotated and arousal ``-5`` is scored for
    valence only. ``labels.all(axis=-1)`` of the result gives the steps with every dimension annotated.
    """
    y = np.asarray(labels, dtype=np.float64)
    return ~np.isnan(y) & (y != AFFWILD2_MISSING)


def fill_faceless(pred: ArrayLike, face: ArrayLike) -> np.ndarray:
    """Apply the Aff-Wild2 rule for frames without a detected face.

    Args:
        pred: (L, D) per-frame predictions (rows of face-less frames are ignored, whatever they hold).
        face: (L,) bool, True where a face was detected.

    Returns:
        (L, D) float64: face rows unchanged; face-less rows before the first face ``-5``; every other face-less row
        the prediction of the nearest earlier face frame (the previous prediction, carried forward). A video without
        any face is ``-5`` throughout.

    Raises:
        ValueError: ``pred`` is not 2-D or ``face`` is not (L,).
    """
    p = np.asarray(pred, dtype=np.float64)
    f = np.asarray(face)
    if p.ndim != 2:
        raise ValueError(f"pred must be (L, D), got shape {p.shape}")
    if f.shape != (p.shape[0],):
        raise ValueError(f"face must be (L,) = ({p.shape[0]},), got shape {f.shape}")
    f = f.astype(bool)
    # Index of the latest face frame at or before each step (-1 before the first face).
    last = np.maximum.accumulate(np.where(f, np.arange(len(f)), -1)) if len(f) else np.zeros(0, dtype=int)
    out = p[np.maximum(last, 0)].copy()
    out[last < 0] = AFFWILD2_MISSING
    return out
