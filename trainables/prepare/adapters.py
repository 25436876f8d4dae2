"""Label-file adapters: read each dataset's native label format into one ``LabelTrack``.

Every dataset annotates on its own timeline and scale: per frame (Aff-Wild2, AFEW-VA), per 40 ms (RECOLA), per 100 ms
(SEWA) or per second (the infant datasets of method 000), on [-1, 1] or [-10, 10]. An adapter turns a file into a
``LabelTrack``: values rescaled to [-1, 1] for training, the time of every label step in seconds, and the native scale
so metrics can also be reported on the dataset's own scale (SPEC "Evaluation protocol" 2 and "The task").

Adapters are registered by name (``register_adapter``) and chosen by name (``read_labels``), so a manifest's
``label_format`` column selects the reader. Adapters are strict: a value that is not a number, an infinite value, a value
outside the native scale, a duplicated / missing / out-of-order row or a wrong header raises ``LabelFileError`` naming the
file, the line and the offending value. Only the format's own "not annotated" marker becomes NaN (an empty cell in the
CSV formats, ``-5`` in Aff-Wild2, a frame absent from an AFEW-VA JSON, ``?`` in ARFF); NaN spelt out as text is an error
because it usually means a broken export rather than a deliberate gap.
"""
from __future__ import annotations

import csv
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trainables.data.labels import UNIT_SCALE, from_unit, to_unit
from trainables.prepare.sidecar import LabelFileError
from trainables.registry import Registry

__all__ = [
    "AdapterSpec",
    "LabelFileError",
    "LabelTrack",
    "adapter_extensions",
    "get_adapter",
    "list_adapters",
    "read_labels",
    "register_adapter",
]

DEFAULT_DIMS: tuple[str, ...] = ("valence", "arousal")
# Relative slack on the native-scale bounds: exports written with "%.6f" or float32 round-trips may overshoot a bound by
# an ulp or so; anything beyond this is a real out-of-range value. Values inside the slack are clipped onto the bound.
_SCALE_SLACK = 1e-6
# Fraction of the hop by which a timestamp may deviate from the regular grid (text rounding of "0.04", "0.1", ...).
_GRID_TOL = 0.01
AFFWILD2_MISSING = -5.0
RECOLA_PLACEHOLDER = "{dim}"


# ---------------------------------------------------------------------------
# LabelTrack
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make the generated __eq__ ambiguous
class LabelTrack:
    """Labels of one video on the dataset's own timeline, rescaled to [-1, 1].

    Attributes:
        values: (L, D) float32 in [-1, 1]; NaN = not annotated.
        times: (L,) float64 seconds, strictly increasing: the time each label step refers to (the centre of the
            interval for interval labels such as one labelled second).
        dims: the D dimension names, in column order of ``values``.
        scale: native (low, high) of the dataset; ``to_native`` maps ``values`` back onto it.
        rate: label steps per second (the nominal rate of the format, e.g. 1 for per-second labels).

    Raises:
        ValueError: inconsistent shapes, dtypes, a non-increasing or non-finite time axis, a degenerate scale or a
            non-positive rate (construction by an adapter never triggers this; it guards hand-made tracks).
    """

    values: np.ndarray
    times: np.ndarray
    dims: tuple[str, ...]
    scale: tuple[float, float]
    rate: float

    def __post_init__(self) -> None:
        v, t = self.values, self.times
        if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype != np.float32:
            raise ValueError(f"LabelTrack.values must be a 2-D float32 array (L, D); got "
                             f"{getattr(v, 'dtype', type(v).__name__)} with shape {getattr(v, 'shape', None)}")
        if not isinstance(t, np.ndarray) or t.ndim != 1 or t.dtype != np.float64 or len(t) != len(v):
            raise ValueError(f"LabelTrack.times must be a 1-D float64 array of length {len(v)} (one per label step); "
                             f"got {getattr(t, 'dtype', type(t).__name__)} with shape {getattr(t, 'shape', None)}")
        if len(self.dims) != v.shape[1]:
            raise ValueError(f"LabelTrack.dims {self.dims} must name the {v.shape[1]} columns of values")
        if not np.isfinite(t).all() or (len(t) > 1 and not (np.diff(t) > 0).all()):
            raise ValueError("LabelTrack.times must be finite and strictly increasing")
        low, high = self.scale
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"LabelTrack.scale must be finite (low, high) with low < high; got {self.scale}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"LabelTrack.rate must be a positive number of label steps per second; got {self.rate}")

    def __len__(self) -> int:
        return len(self.times)

    def to_native(self, values: np.ndarray) -> np.ndarray:
        """Map values on [-1, 1] back onto the native ``scale`` (inverse of the adapter's rescale).

        Args:
            values: any array whose last axis holds the ``dims`` (or a scalar / any shape: the map is element-wise);
                NaN stays NaN, values outside [-1, 1] (e.g. unclipped predictions) map linearly outside the scale.

        Returns:
            float64 array of the same shape on the native scale.
        """
        return from_unit(np.asarray(values, dtype=np.float64), self.scale)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

AdapterFn = Callable[..., LabelTrack]


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter: its reader, the label-file extensions it reads, and its extra keyword options."""

    name: str
    fn: AdapterFn
    extensions: tuple[str, ...]
    options: tuple[str, ...]


_ADAPTERS: Registry[AdapterSpec] = Registry("label format", plural="formats")
_CORE_PARAMS = ("path", "fps", "dims")


def register_adapter(name: str, *, extensions: Sequence[str] = (".csv",)) -> Callable[[AdapterFn], AdapterFn]:
    """Decorator registering ``fn(path: Path, *, fps: float, dims: tuple[str, ...], **options) -> LabelTrack``.

    Args:
        name: the format name used in manifests and ``read_labels``.
        extensions: label-file suffixes (with the dot, lower case) this format uses; ``build_manifest`` pairs videos with
            label files of these suffixes.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Raises:
        ValueError: an empty name, a name already registered, or an ``fn`` lacking the ``path, *, fps, dims`` parameters.
    """
    if not name or not name.strip():
        raise ValueError("register_adapter: the adapter name must be a non-empty string")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)

    def decorate(fn: AdapterFn) -> AdapterFn:
        if name in _ADAPTERS:
            raise ValueError(f"register_adapter: adapter {name!r} is already registered "
                             f"(by {_ADAPTERS.get(name).fn!r})")
        params = inspect.signature(fn).parameters
        missing = [p for p in _CORE_PARAMS if p not in params]
        if missing:
            raise ValueError(f"register_adapter: {fn!r} for {name!r} lacks parameter(s) {', '.join(missing)}; "
                             "adapters take (path, *, fps, dims, **options)")
        options = tuple(p for p in params if p not in _CORE_PARAMS)
        _ADAPTERS.add(name, AdapterSpec(name, fn, exts, options))
        return fn

    return decorate


def list_adapters() -> list[str]:
    """Names of the registered adapters, sorted."""
    return _ADAPTERS.names()


def get_adapter(name: str) -> AdapterSpec:
    """The registered adapter ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    return _ADAPTERS.get(name)


def adapter_extensions(name: str) -> tuple[str, ...]:
    """Label-file suffixes (e.g. ``(".csv",)``) of adapter ``name``; ValueError for an unknown name."""
    return get_adapter(name).extensions


def read_labels(format: str, path: str | Path, *, fps: float, dims: Sequence[str] = DEFAULT_DIMS,
                **options: Any) -> LabelTrack:
    """Read a label file with the adapter registered as ``format``.

    Args:
        format: adapter name (see ``list_adapters()``).
        path: the label file; for ``recola_arff`` it may contain ``{dim}``, filled with each dimension name.
        fps: frame rate of the video the labels belong to (used by per-frame formats to place label steps in time;
            validated for every format so a bad manifest value fails early).
        dims: dimension names to read, in the order of the returned columns.
        **options: adapter-specific keywords, e.g. ``scale=(0, 10)`` for ``second_csv`` / ``frame_csv``.

    Returns:
        The ``LabelTrack``.

    Raises:
        ValueError: unknown format (lists the valid ones), an option the adapter does not take (lists the ones it does),
            a non-positive fps, or empty / duplicated dims.
        LabelFileError: the file is missing or unusable (see the adapter).
    """
    spec = get_adapter(format)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(f"label format {format!r} does not take option(s) {', '.join(unknown)}; allowed: {allowed}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"read_labels({format!r}, {path}): fps must be a positive finite number; got {fps!r}")
    dims = _check_dims(dims)
    return spec.fn(Path(path), fps=float(fps), dims=dims, **options)


def _check_dims(dims: Sequence[str]) -> tuple[str, ...]:
    if isinstance(dims, str):  # a bare "valence" would otherwise be read as 7 one-letter dims
        dims = (dims,)
    dims = tuple(dims)
    if not dims or any(not isinstance(d, str) or not d.strip() for d in dims):
        raise ValueError(f"dims must be a non-empty sequence of non-empty names; got {dims!r}")
    if len(set(d.lower() for d in dims)) != len(dims):
        raise ValueError(f"dims must be distinct (case-insensitively); got {dims!r}")
    return dims


def _check_scale(scale: Sequence[float], where: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: scale must be a pair (low, high) of numbers; got {scale!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{where}: scale must be finite with low < high; got {scale!r}")
    return low, high


# ---------------------------------------------------------------------------
# Parsing helpers shared by the adapters
# ---------------------------------------------------------------------------

def _err(path: Path | str, fmt: str, msg: str, line: int | None = None, column: str | None = None) -> LabelFileError:
    where = f"label file {path} ({fmt})"
    if line is not None:
        where += f" line {line}"
    if column is not None:
        where += f", column {column!r}"
    return LabelFileError(f"{where}: {msg}")


def _read_text(path: Path, fmt: str) -> str:
    if not path.is_file():
        raise _err(path, fmt, "does not exist" if not path.exists() else "is not a file")
    try:
        # utf-8-sig: exports from spreadsheet tools often start with a byte-order mark that would corrupt the header.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise _err(path, fmt, f"cannot be read: {exc}") from None
    if not text.strip():
        raise _err(path, fmt, "is empty")
    return text


def _read_table(path: Path, fmt: str, delimiter: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header cells, data rows (stripped cells) and their 1-based file line numbers.

    Trailing blank lines are ignored; a blank line between data rows is an error because in formats without a key column
    (Aff-Wild2) it would silently shift every later label by one step.
    """
    lines = _read_text(path, fmt).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    header: list[str] | None = None
    rows: list[list[str]] = []
    numbers: list[int] = []
    for lineno, cells in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        if header is None:
            if not cells or not any(c.strip() for c in cells):
                raise _err(path, fmt, "blank line before the header", lineno)
            header = [c.strip() for c in cells]
            continue
        if not cells or not any(c.strip() for c in cells):
            raise _err(path, fmt, "blank line between data rows (every row must hold one label step)", lineno)
        if len(cells) != len(header):
            raise _err(path, fmt, f"{len(cells)} field(s) but the header has {len(header)} "
                                  f"({delimiter.join(header)})", lineno)
        rows.append([c.strip() for c in cells])
        numbers.append(lineno)
    assert header is not None  # the text is not blank, so a header line exists
    if not rows:
        raise _err(path, fmt, f"has a header ({delimiter.join(header)}) but no data rows")
    return header, rows, numbers


_NAN_WORDS = {"nan", "+nan", "-nan", "na", "n/a", "null", "none"}


def _parse_numbers(cells: Sequence[str], lines: Sequence[int], path: Path, fmt: str, column: str, *,
                   missing: Sequence[str] = ()) -> np.ndarray:
    """Parse one column of text cells to float64; cells in ``missing`` (e.g. ``""``) become NaN.

    Raises:
        LabelFileError: naming the line and the text, for NaN spelt as text, a non-numeric cell, an empty cell where
            empties are not allowed, or an infinite value.
    """
    out = np.full(len(cells), np.nan, dtype=np.float64)
    keep = np.array([c not in missing for c in cells], dtype=bool)
    present = [c for c, k in zip(cells, keep) if k]
    try:
        # Fast path: numpy parses the whole column at once; only a failure needs the per-cell scan for the message.
        parsed = np.array(present, dtype=np.float64) if present else np.empty(0)
    except ValueError:
        parsed = None
    if parsed is not None and np.isfinite(parsed).all():
        out[keep] = parsed
        return out
    hint = f"; use {' or '.join(repr(m) for m in missing)} for 'not annotated'" if missing else ""
    for i, (cell, line) in enumerate(zip(cells, lines)):
        if not keep[i]:
            continue
        if cell == "":
            raise _err(path, fmt, "empty cell where a number is expected", line, column)
        if cell.lower() in _NAN_WORDS:
            raise _err(path, fmt, f"NaN text {cell!r} where a number is expected{hint}", line, column)
        try:
            value = float(cell)
        except ValueError:
            raise _err(path, fmt, f"non-numeric value {cell!r}", line, column) from None
        if math.isnan(value):
            raise _err(path, fmt, f"NaN text {cell!r} where a number is expected{hint}", line, column)
        if math.isinf(value):
            raise _err(path, fmt, f"infinite value {cell!r}", line, column)
        out[i] = value
    return out


def _parse_keys(cells: Sequence[str], lines: Sequence[int], path: Path, fmt: str, column: str) -> np.ndarray:
    """Parse an integer key column (frame / second numbers); "3" and "3.0" are accepted, "3.5" is not."""
    values = _parse_numbers(cells, lines, path, fmt, column)
    frac = values != np.round(values)
    if frac.any():
        i = int(np.argmax(frac))
        raise _err(path, fmt, f"{column} number {cells[i]!r} is not an integer", lines[i], column)
    return values.astype(np.int64)


def _check_consecutive(keys: np.ndarray, lines: Sequence[int], path: Path, fmt: str, column: str) -> None:
    """Keys must count 0, 1, ..., L-1 in order; name the first duplicate, gap or out-of-order row."""
    expected = np.arange(len(keys))
    bad = np.flatnonzero(keys != expected)
    if not len(bad):
        return
    i = int(bad[0])
    key = int(keys[i])
    first = np.flatnonzero(keys[:i] == key)
    if len(first):
        msg = f"duplicated {column} {key} (first on line {lines[int(first[0])]})"
    elif key > i:
        missing = f"{column}s {i}..{key - 1} are" if key - 1 > i else f"{column} {i} is"
        msg = f"{missing} missing (this row has {column} {key}); {column} numbers must count 0..L-1 with no gaps"
    else:
        msg = f"{column} {key} is out of order (expected {column} {i}); {column} numbers must count 0..L-1"
    raise _err(path, fmt, msg, lines[i], column)


def _check_grid(times: np.ndarray, lines: Sequence[int], path: Path, fmt: str, column: str, hop: float) -> None:
    """Times must be >= 0 and advance by exactly ``hop``; name the first duplicated, missing or irregular row."""
    tol = hop * _GRID_TOL
    if times[0] < -tol:
        raise _err(path, fmt, f"negative time {times[0]:g}", lines[0], column)
    bad = np.flatnonzero(np.abs(np.diff(times) - hop) > tol)
    if len(bad):
        i = int(bad[0])
        prev, cur = float(times[i]), float(times[i + 1])
        step = cur - prev
        if abs(step) <= tol:
            msg = f"duplicated time {cur:g} (also on line {lines[i]})"
        elif step < 0:
            msg = f"time {cur:g} goes back from {prev:g} on line {lines[i]} (rows must be in time order)"
        elif abs(step / hop - round(step / hop)) * hop <= tol:
            msg = (f"{int(round(step / hop)) - 1} row(s) missing between time {prev:g} (line {lines[i]}) and "
                   f"{cur:g}; the format has one row every {hop:g} s")
        else:
            msg = f"time {cur:g} is {step:g} s after the previous row (line {lines[i]}); expected a {hop:g} s hop"
        raise _err(path, fmt, msg, lines[i + 1], column)


def _check_range(native: np.ndarray, scale: tuple[float, float], lines: Sequence[int], path: Path, fmt: str,
                 columns: Sequence[str], texts: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Reject values outside ``scale`` (beyond a rounding slack), clip the slack, and return the values on [-1, 1]."""
    low, high = scale
    slack = _SCALE_SLACK * (high - low)
    with np.errstate(invalid="ignore"):
        outside = (native < low - slack) | (native > high + slack)
    if outside.any():
        r, c = (int(x) for x in np.argwhere(outside)[0])
        shown = texts[r][c] if texts is not None else f"{native[r, c]:g}"
        raise _err(path, fmt, f"value {shown} is outside the native scale [{low:g}, {high:g}]", lines[r], columns[c])
    clipped = np.clip(native, low, high)  # NaN passes through np.clip unchanged
    return to_unit(clipped, scale).astype(np.float32)


def _require_annotation(values: np.ndarray, path: Path, fmt: str, marker: str) -> None:
    if np.isnan(values).all():
        raise _err(path, fmt, f"no annotated value at all (every value is {marker})")


def _find_columns(header: Sequence[str], wanted: Sequence[str], path: Path, fmt: str, expected: str, *,
                  case_insensitive: bool = False) -> list[int]:
    """Index of each wanted column in the header; wrong/duplicated/missing names raise naming the expected header."""
    norm = [h.lower() for h in header] if case_insensitive else list(header)
    for name in set(norm):
        if name and norm.count(name) > 1:
            raise _err(path, fmt, f"header {list(header)} repeats column {name!r}; expected {expected}", 1)
    idx = []
    for w in wanted:
        key = w.lower() if case_insensitive else w
        if key not in norm:
            raise _err(path, fmt, f"header {list(header)} lacks column {w!r}; expected {expected}", 1)
        idx.append(norm.index(key))
    return idx


def _columns_values(rows: Sequence[Sequence[str]], idx: Sequence[int], lines: Sequence[int], path: Path, fmt: str,
                    names: Sequence[str], missing: Sequence[str]) -> np.ndarray:
    cols = [_parse_numbers([r[i] for r in rows], lines, path, fmt, n, missing=missing) for i, n in zip(idx, names)]
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------

def _keyed_csv(path: Path, *, fmt: str, key: str, dims: tuple[str, ...], scale: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Shared reader of ``<key>,<dims...>`` CSVs: returns (consecutive keys, values on [-1, 1])."""
    header, rows, lines = _read_table(path, fmt, ",")
    expected = ",".join((key, *dims))
    if header[0] != key:
        raise _err(path, fmt, f"header {header} must start with column {key!r}; expected {expected}", 1)
    idx = _find_columns(header, dims, path, fmt, expected)
    keys = _parse_keys([r[0] for r in rows], lines, path, fmt, key)
    _check_consecutive(keys, lines, path, fmt, key)
    native = _columns_values(rows, idx, lines, path, fmt, dims, missing=("",))
    _require_annotation(native, path, fmt, "an empty cell")
    texts = [[r[i] for i in idx] for r in rows]
    return keys, _check_range(native, scale, lines, path, fmt, dims, texts)


@register_adapter("frame_csv", extensions=(".csv",))
def read_frame_csv(path: Path, *, fps: float, dims: tuple[str, ...], scale: Sequence[float] = UNIT_SCALE
                   ) -> LabelTrack:
    """The project's generic per-frame CSV: header ``frame,<dims...>``, one row per frame ``0..L-1``.

    Same file as ``sidecar.read_frame_labels`` reads, with these differences: dims are found by name (extra columns after
    ``frame`` are ignored), values must lie on ``scale``, and NaN written as text is an error (leave the cell empty for
    "not annotated").

    Args:
        path: the CSV.
        fps: video frame rate; ``times = frame / fps``.
        dims: dimension columns to read.
        scale: native (low, high); default [-1, 1].

    Returns:
        ``LabelTrack`` with ``rate = fps``.

    Raises:
        LabelFileError: missing/empty file, header not starting with ``frame`` or lacking a dim, frames not counting
            0..L-1 (duplicated, missing, out of order), non-numeric / NaN-text / infinite values, values outside
            ``scale``, or no annotated value at all.
    """
    scale = _check_scale(scale, f"frame_csv {path}")
    keys, values = _keyed_csv(path, fmt="frame_csv", key="frame", dims=dims, scale=scale)
    return LabelTrack(values, keys / fps, dims, scale, fps)


@register_adapter("second_csv", extensions=(".csv",))
def read_second_csv(path: Path, *, fps: float, dims: tuple[str, ...], scale: Sequence[float] = UNIT_SCALE
                    ) -> LabelTrack:
    """Per-second labels (infant datasets of method 000): header ``second,<dims...>``, one row per second ``0..L-1``.

    A row stands for the interval [second, second + 1), so its time is the interval's centre ``second + 0.5``. Seconds
    must count from 0 so that row i is second i of the video; leave the value cells empty for seconds that are not
    annotated.

    Args:
        path: the CSV.
        fps: video frame rate (not needed to place the labels; validated only).
        dims: dimension columns to read.
        scale: native (low, high) of the dataset; default [-1, 1].

    Returns:
        ``LabelTrack`` with ``rate = 1``.

    Raises:
        LabelFileError: as for ``frame_csv`` with ``second`` in place of ``frame``.
    """
    scale = _check_scale(scale, f"second_csv {path}")
    keys, values = _keyed_csv(path, fmt="second_csv", key="second", dims=dims, scale=scale)
    return LabelTrack(values, keys + 0.5, dims, scale, 1.0)


@register_adapter("affwild2_va", extensions=(".txt",))
def read_affwild2_va(path: Path, *, fps: float, dims: tuple[str, ...]) -> LabelTrack:
    """Aff-Wild2 VA annotation txt: header ``valence,arousal``, then one ``v,a`` line per video frame, in [-1, 1].

    ``-5`` marks a value that is not annotated (SPEC 004: excluded from training and metrics); it becomes NaN for that
    value only. Line i (after the header) is frame i, so ``times = i / fps``.

    Args:
        path: the txt file.
        fps: video frame rate.
        dims: any of ``valence`` / ``arousal``, in the wanted column order.

    Returns:
        ``LabelTrack`` with scale (-1, 1) and ``rate = fps``.

    Raises:
        ValueError: a dim other than valence / arousal.
        LabelFileError: missing/empty file, a header other than ``valence,arousal``, a line with a wrong number of
            fields or a blank line between frames, non-numeric / NaN-text / infinite values, a value outside [-1, 1]
            that is not -5, or only -5 values.
    """
    fmt = "affwild2_va"
    allowed = ("valence", "arousal")
    if any(d not in allowed for d in dims):
        raise ValueError(f"affwild2_va {path}: dims {dims} must be taken from {allowed}")
    header, rows, lines = _read_table(path, fmt, ",")
    if [h.lower() for h in header] != list(allowed):
        raise _err(path, fmt, f"header {header} but expected ['valence', 'arousal']", 1)
    idx = [allowed.index(d) for d in dims]
    native = _columns_values(rows, idx, lines, path, fmt, dims, missing=())
    native[native == AFFWILD2_MISSING] = np.nan
    _require_annotation(native, path, fmt, "-5")
    texts = [[r[i] for i in idx] for r in rows]
    values = _check_range(native, UNIT_SCALE, lines, path, fmt, dims, texts)
    return LabelTrack(values, np.arange(len(rows), dtype=np.float64) / fps, dims, UNIT_SCALE, fps)


def _no_duplicate_keys(path: Path, fmt: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise _err(path, fmt, f"duplicated JSON key {k!r}")
            out[k] = v
        return out
    return hook


def _reject_constant(path: Path, fmt: str) -> Callable[[str], Any]:
    def hook(name: str) -> Any:
        raise _err(path, fmt, f"NaN/Infinity literal {name!r} where a number is expected")
    return hook


@register_adapter("afew_va", extensions=(".json",))
def read_afew_va(path: Path, *, fps: float, dims: tuple[str, ...]) -> LabelTrack:
    """AFEW-VA per-clip JSON: ``{"frames": {"00000": {"valence": v, "arousal": a, ...}, ...}}``, values in [-10, 10].

    Frame keys are (zero-padded) frame numbers; the track runs from frame 0 to the largest key, and frames absent from
    the JSON become NaN rows so that row i stays frame i. Other keys of a frame entry (landmarks, ...) are ignored.

    Args:
        path: the JSON file.
        fps: video frame rate; ``times = frame / fps``.
        dims: keys to read from every frame entry.

    Returns:
        ``LabelTrack`` with scale (-10, 10) (values / 10) and ``rate = fps``.

    Raises:
        LabelFileError: missing/empty/invalid JSON, no ``frames`` object, a frame key that is not a non-negative integer,
            two keys for the same frame (e.g. ``"7"`` and ``"00007"``), a frame entry lacking a dim, a value that is
            not a number (string, null, bool, NaN/Infinity literal), or a value outside [-10, 10].
    """
    fmt, scale = "afew_va", (-10.0, 10.0)
    text = _read_text(path, fmt)
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys(path, fmt),
                         parse_constant=_reject_constant(path, fmt))
    except json.JSONDecodeError as exc:
        raise _err(path, fmt, f"invalid JSON: {exc}") from None
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, dict):
        raise _err(path, fmt, 'expected a JSON object with a "frames" object mapping frame numbers to labels')
    if not frames:
        raise _err(path, fmt, '"frames" is empty (no annotated frame)')
    by_frame: dict[int, str] = {}
    for key in frames:
        if not (isinstance(key, str) and key.isdigit() and key.isascii()):
            raise _err(path, fmt, f"frame key {key!r} is not a non-negative integer frame number")
        n = int(key)
        if n in by_frame:
            raise _err(path, fmt, f"frame keys {by_frame[n]!r} and {key!r} both name frame {n}")
        by_frame[n] = key
    length = max(by_frame) + 1
    native = np.full((length, len(dims)), np.nan, dtype=np.float64)
    for n, key in sorted(by_frame.items()):
        entry = frames[key]
        if not isinstance(entry, dict):
            raise _err(path, fmt, f"frame {key!r}: expected an object with {', '.join(dims)}, got {entry!r}")
        for j, d in enumerate(dims):
            if d not in entry:
                raise _err(path, fmt, f"frame {key!r} lacks {d!r} (has {', '.join(map(repr, entry)) or 'nothing'})")
            v = entry[d]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _err(path, fmt, f"frame {key!r}: {d} is {v!r}, not a number")
            if math.isinf(v):  # json turns an overflowing literal such as 1e400 into inf
                raise _err(path, fmt, f"frame {key!r}: {d} value {v!r} is infinite")
            if not (scale[0] - _SCALE_SLACK * 20 <= v <= scale[1] + _SCALE_SLACK * 20):
                raise _err(path, fmt, f"frame {key!r}: {d} value {v!r} is outside the native scale [-10, 10]")
            native[n, j] = v
    values = to_unit(np.clip(native, *scale), scale).astype(np.float32)
    return LabelTrack(values, np.arange(length, dtype=np.float64) / fps, dims, scale, fps)


@register_adapter("sewa_csv", extensions=(".csv",))
def read_sewa_csv(path: Path, *, fps: float, dims: tuple[str, ...]) -> LabelTrack:
    """SEWA-style ``;``-separated CSV at a 100 ms hop, values in [-1, 1].

    The header holds a time column named ``time`` or ``frameTime`` (seconds) and the dimension columns, matched by
    case-insensitive name (``Arousal`` matches dim ``arousal``); other columns (e.g. an instance name) are ignored.
    Times are taken from the file and must advance by 0.1 s from a non-negative start. Empty value cells are NaN.

    Args:
        path: the CSV.
        fps: video frame rate (validated only).
        dims: dimension columns to read.

    Returns:
        ``LabelTrack`` with scale (-1, 1) and ``rate = 10``.

    Raises:
        LabelFileError: missing/empty file, no time column or a missing/duplicated dim column, times that repeat, go
            back, skip rows or do not follow a 0.1 s hop, non-numeric / NaN-text / infinite values, values outside
            [-1, 1], or no annotated value.
    """
    fmt, rate = "sewa_csv", 10.0
    header, rows, lines = _read_table(path, fmt, ";")
    expected = "time (or frameTime);" + ";".join(dims)
    lower = [h.lower() for h in header]
    time_cols = [i for i, h in enumerate(lower) if h in ("time", "frametime")]
    if len(time_cols) != 1:
        what = "no" if not time_cols else "more than one"
        raise _err(path, fmt, f"header {header} has {what} time column; expected {expected}", 1)
    ti = time_cols[0]
    idx = _find_columns(header, dims, path, fmt, expected, case_insensitive=True)
    times = _parse_numbers([r[ti] for r in rows], lines, path, fmt, header[ti])
    _check_grid(times, lines, path, fmt, header[ti], 1.0 / rate)
    names = [header[i] for i in idx]
    native = _columns_values(rows, idx, lines, path, fmt, names, missing=("",))
    _require_annotation(native, path, fmt, "an empty cell")
    values = _check_range(native, UNIT_SCALE, lines, path, fmt, names, [[r[i] for i in idx] for r in rows])
    return LabelTrack(values, times, dims, UNIT_SCALE, rate)


def _read_arff(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """frameTime and GoldStandard columns (float64) of a RECOLA gold-standard ARFF, with data line numbers."""
    text = _read_text(path, fmt)
    attrs: list[str] = []
    relation = False
    data_start: int | None = None
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        low = line.lower()
        if low.startswith("@relation"):
            relation = True
        elif low.startswith("@attribute"):
            parts = line.split(None, 2)
            if len(parts) < 3:
                raise _err(path, fmt, f"malformed attribute declaration {line!r}", lineno)
            name, kind = parts[1].strip("'\""), parts[2].strip().lower()
            if name.lower() in ("frametime", "goldstandard") and kind not in ("numeric", "real", "integer"):
                raise _err(path, fmt, f"attribute {name!r} has type {parts[2]!r}; expected numeric", lineno)
            attrs.append(name.lower())
        elif low.startswith("@data"):
            data_start = lineno
            break
        else:
            raise _err(path, fmt, f"unexpected line {line!r} before @data", lineno)
    expected = "@relation, @attribute Instance_name string, @attribute frameTime numeric, " \
               "@attribute GoldStandard numeric, @data"
    if not relation or data_start is None:
        raise _err(path, fmt, f"header lacks {'@relation' if not relation else '@data'}; expected {expected}")
    for need in ("frametime", "goldstandard"):
        if attrs.count(need) != 1:
            raise _err(path, fmt, f"header declares attribute(s) {attrs} but needs exactly one {need!r}; "
                                  f"expected {expected}")
    ti, gi = attrs.index("frametime"), attrs.index("goldstandard")
    rows: list[list[str]] = []
    numbers: list[int] = []
    for lineno in range(data_start + 1, len(lines) + 1):
        line = lines[lineno - 1].strip()
        if not line or line.startswith("%"):
            continue
        cells = next(csv.reader([line], quotechar="'", skipinitialspace=True))
        if len(cells) != len(attrs):
            raise _err(path, fmt, f"{len(cells)} field(s) but {len(attrs)} attributes are declared", lineno)
        rows.append([c.strip() for c in cells])
        numbers.append(lineno)
    if not rows:
        raise _err(path, fmt, "no data rows after @data")
    times = _parse_numbers([r[ti] for r in rows], numbers, path, fmt, "frameTime")
    gold = _parse_numbers([r[gi] for r in rows], numbers, path, fmt, "GoldStandard", missing=("?",))
    return times, gold, numbers


@register_adapter("recola_arff", extensions=(".arff",))
def read_recola_arff(path: Path, *, fps: float, dims: tuple[str, ...]) -> LabelTrack:
    """RECOLA gold-standard ARFF files at a 40 ms hop, one file per dimension, values in [-1, 1].

    Each file has ``@relation``, ``@attribute Instance_name string``, ``@attribute frameTime numeric``,
    ``@attribute GoldStandard numeric``, ``@data`` and rows like ``'train_1',0.00,0.0123``. ``path`` may contain
    ``{dim}`` (e.g. ``gs/{dim}/train_1.arff``), filled with each dimension name; without it only one dim can be read.
    ``?`` (ARFF's missing value) becomes NaN.

    Args:
        path: the file, or a template with ``{dim}``.
        fps: video frame rate (validated only).
        dims: dimension names substituted into ``{dim}``.

    Returns:
        ``LabelTrack`` with scale (-1, 1), ``rate = 25`` and the files' frameTime as times.

    Raises:
        LabelFileError: several dims but no ``{dim}`` in the path, a missing/empty file, a header without @relation /
            @data / frameTime / GoldStandard, a row with a wrong number of fields, frameTime not on a 0.04 s grid
            (duplicated / missing / out-of-order rows),
            non-numeric / NaN-text / infinite values, values outside [-1, 1], no annotated value, or dimension files
            whose frameTime grids differ (the error names both files).
    """
    fmt, rate = "recola_arff", 25.0
    template = str(path)
    if RECOLA_PLACEHOLDER not in template and len(dims) > 1:
        raise LabelFileError(f"label file {path} (recola_arff): RECOLA keeps one file per dimension; put "
                             f"{RECOLA_PLACEHOLDER} in the path to read {', '.join(dims)}")
    columns = []
    first: tuple[Path, np.ndarray] | None = None
    for d in dims:
        file = Path(template.replace(RECOLA_PLACEHOLDER, d))
        times, gold, lines = _read_arff(file, fmt)
        _check_grid(times, lines, file, fmt, "frameTime", 1.0 / rate)
        _require_annotation(gold, file, fmt, "?")
        unit = _check_range(gold[:, None], UNIT_SCALE, lines, file, fmt, ["GoldStandard"])[:, 0]
        if first is None:
            first = (file, times)
        elif len(times) != len(first[1]) or not np.allclose(times, first[1], rtol=0, atol=_GRID_TOL / rate):
            raise LabelFileError(
                f"label files {first[0]} and {file} ({fmt}) have different frameTime grids "
                f"({len(first[1])} rows from {first[1][0]:g} s vs {len(times)} rows from {times[0]:g} s); "
                "the dimension files of one recording must share the same time steps")
        columns.append(unit)
    assert first is not None
    return LabelTrack(np.stack(columns, axis=1), first[1], dims, UNIT_SCALE, rate)
