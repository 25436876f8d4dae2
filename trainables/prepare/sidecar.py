"""Readers for per-frame label files and precomputed face sidecars (boxes, score, 5 landmarks)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import DataError

FACE_COLUMNS = ("frame", "x1", "y1", "x2", "y2", "score",
                "le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y", "ml_x", "ml_y", "mr_x", "mr_y")


class LabelFileError(DataError):
    """A label file, face sidecar or face crops folder that cannot be used (or does not fit its video); the message
    names the file and the problem."""


def read_frame_labels(path: str | Path, dims: tuple[str, ...] = ("valence", "arousal")) -> np.ndarray:
    """Read a per-frame label CSV with header ``frame,<dims...>`` into a (T, D) float32 array.

    Frames must be 0..T-1 in order. Empty cells become NaN (not annotated); the values themselves must be finite.

    Raises:
        LabelFileError: unreadable file, wrong header, frames out of order, non-numeric or infinite values, or no
            annotated value at all.
    """
    import pandas as pd  # here, not at the top: `data prepare` imports this module but reads no sidecar on most runs

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for broken files
        raise LabelFileError(f"label file {path} cannot be read: {exc}") from None
    expected = ["frame", *dims]
    if list(df.columns[: len(expected)]) != expected:
        raise LabelFileError(f"label file {path}: header {list(df.columns)} but expected {expected}")
    if len(df) == 0:
        raise LabelFileError(f"label file {path} has no rows")
    frames = pd.to_numeric(df["frame"], errors="coerce").to_numpy()
    if not np.array_equal(frames, np.arange(len(df))):
        raise LabelFileError(f"label file {path}: column 'frame' must count 0..{len(df) - 1} in order")
    raw = df[list(dims)]
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    # Empty cells are "not annotated"; anything else that does not parse as a number is an error, not a silent NaN.
    present = raw.apply(lambda col: col.notna() & (col.astype(str).str.strip() != "")).to_numpy()
    bad = np.isnan(values) & present
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise LabelFileError(f"label file {path}: non-numeric value {raw.iat[row, col]!r} in column {dims[col]!r} "
                             f"at frame {row}")
    if np.isinf(values).any():
        raise LabelFileError(f"label file {path}: infinite label values")
    if np.isnan(values).all():
        raise LabelFileError(f"label file {path}: no annotated value (every cell is empty or NaN)")
    return values


@dataclass
class FaceTrack:
    """Per-frame face boxes (T, 4) x1,y1,x2,y2; scores (T,) (0 where no face); landmarks (T, 5, 2) in the order
    left eye, right eye, nose tip, left mouth corner, right mouth corner."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def read_face_sidecar(path: str | Path) -> FaceTrack:
    """Read a precomputed face sidecar CSV (columns ``FACE_COLUMNS``); empty box cells mean no face on that frame.

    Raises:
        LabelFileError: unreadable file, missing columns, frames not counting 0..T-1, or a non-numeric value.
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise LabelFileError(f"face sidecar {path} cannot be read: {exc}") from None
    missing = [c for c in FACE_COLUMNS if c not in df.columns]
    if missing:
        raise LabelFileError(f"face sidecar {path} lacks column(s) {', '.join(missing)}; expected {', '.join(FACE_COLUMNS)}")
    frames = pd.to_numeric(df["frame"], errors="coerce").to_numpy()
    if not np.array_equal(frames, np.arange(len(df))):
        raise LabelFileError(f"face sidecar {path}: column 'frame' must count 0..{len(df) - 1} in order, one row per "
                             "video frame")
    numeric = df[list(FACE_COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    bad = (numeric.isna() & df[list(FACE_COLUMNS[1:])].notna()).to_numpy()
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise LabelFileError(f"face sidecar {path}: non-numeric value {df[FACE_COLUMNS[1 + col]].iat[row]!r} in "
                             f"column {FACE_COLUMNS[1 + col]!r} at frame {row}")
    boxes = numeric[["x1", "y1", "x2", "y2"]].to_numpy(np.float32)
    scores = numeric["score"].fillna(0.0).to_numpy(np.float32)
    lms = numeric[list(FACE_COLUMNS[6:])].to_numpy(np.float32).reshape(-1, 5, 2)
    scores[np.isnan(boxes).any(axis=1)] = 0.0
    return FaceTrack(boxes, scores, lms)
