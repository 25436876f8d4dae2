"""Synthetic face-video dataset with per-frame valence / arousal labels.

``synthesize()`` writes real ``.mp4`` files of simple rendered faces together
with continuous labels, a face-detector style sidecar and a manifest, in the
same layout a real dataset would be converted to. It exists so the whole
pipeline (decoding, face cropping, sequence models, CCC objectives, sweeps)
can be exercised end to end on a CPU in minutes, with a signal that a tiny
CNN+GRU can learn.

Rendering rules (and why)
-------------------------
Each video has a latent state ``s_v(t), s_a(t)`` in ``[-1, 1]``: a sum of three
random sinusoids (periods 2-8 s) plus a little low-pass filtered noise,
min-max rescaled so every video spans the full range. Valence and arousal are
independent, and every video draws its own state.

* **Valence** is visible in every single frame:
  the mouth is a thick dark parabola whose curvature is proportional to
  valence (corners up = smile for ``v > 0``, corners down = frown for
  ``v < 0``), and the brows tilt with valence (inner ends drop for ``v < 0``).
* **Arousal** is partly static and partly dynamic:
  the eye opening goes from a closed lid (``a = -1``) to a wide open eye with
  a large dark iris (``a = +1``), and the face centre moves along a smooth
  Lissajous path whose speed is proportional to ``a + 1``. Reading arousal
  fully therefore needs several frames (motion), which is what the recurrent
  part of a model is for.
* **Subjects** differ in face shape (ellipse axes), skin tone, background
  colour with a mild static noise texture, position and scale. A subject's
  appearance is fixed and drawn from the seed. With ``variant="subject_shift"``
  the validation and test subjects are drawn from a shifted appearance
  distribution (much darker or lighter skin, a different background range) to
  test robustness to domain shift.
* **Annotator delay**: labels lag the face by ``lag_frames``:
  ``label[t] = state[max(t - lag_frames, 0)]`` (recorded in metadata.json).
  Frame ``t`` of the video shows ``state[t]``.
* **Missing faces**: about ``blank_rate`` of the frames, in runs of 2-6
  consecutive frames, have no face: either the face is occluded by a large
  box of background colour, or the frame is a uniform background. The
  sidecar marks these frames with score 0 and empty box/landmarks. Labels
  keep running through them (the state does not stop).

Files written under ``out_dir``
-------------------------------
* ``videos/<video_id>.mp4`` -- BGR ``size x size`` frames, fourcc ``mp4v`` at ``fps``.
* ``labels/<video_id>.csv`` -- ``frame,valence,arousal`` (6 decimals), one row per
  frame; for ``variant="per_second"``: ``second,valence,arousal``, one row per
  (possibly partial) second, the mean of the per-frame (lagged) labels.
* ``faces/<video_id>.csv`` --
  ``frame,x1,y1,x2,y2,score,le_x,le_y,re_x,re_y,nose_x,nose_y,ml_x,ml_y,mr_x,mr_y``.
  Box in integer pixels, ``x1,y1`` inclusive and ``x2,y2`` exclusive (crop is
  ``img[y1:y2, x1:x2]``), clipped to the frame. Landmarks (left eye centre,
  right eye centre, nose tip, left mouth corner, right mouth corner; "left"
  = smaller x in the image) with 2 decimals. No-face rows: score ``0.0000``
  and empty box / landmark fields.
* ``manifest.csv`` -- ``video_id,path,subject,split,labels,faces``; paths are
  relative to the manifest's folder.
* ``metadata.json`` -- generator parameters, ``label_rate``, ``dims`` and ``splits``.

Determinism: everything is drawn from ``numpy.random.Generator`` streams
derived from ``seed`` (``default_rng([seed, stream, ...])``), so the same seed
gives byte-identical CSV / JSON files and identical decoded video frames.
The dataset is built in a temporary sibling folder and renamed into place at
the end, so a half-written dataset never looks complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np

from trainables.data.labels import to_unit

__all__ = [
    "VARIANTS",
    "FACE_COLUMNS",
    "FOURCC",
    "synthesize",
    "synthesize_heldout",
    "render_states",
    "lag_labels",
    "per_second_labels",
    "assign_splits",
    "subject_ids",
]

GENERATOR = "emotune.synth"
VERSION = 1
VARIANTS = ("per_frame", "per_second", "subject_shift")
FOURCC = "mp4v"  # written by OpenCV's bundled FFmpeg, read by decord 0.6.0
DIMS = ["valence", "arousal"]
FACE_COLUMNS = [
    "frame", "x1", "y1", "x2", "y2", "score",
    "le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y",
    "ml_x", "ml_y", "mr_x", "mr_y",
]
MANIFEST_COLUMNS = ["video_id", "path", "subject", "split", "labels", "faces"]
MIN_SUBJECTS = 3

# Random stream ids: default_rng([seed, STREAM, ...]) keeps every component
# independent of the others and of the number of subjects / videos.
_S_STATE, _S_SUBJECT, _S_SPLIT, _S_VIDEO = 1, 2, 3, 4

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT


# ---------------------------------------------------------------------------
# Latent state and labels
# ---------------------------------------------------------------------------

def render_states(seed: int, subject: int, video: int, frames: int, fps: int) -> np.ndarray:
    """Latent per-frame state of one video, shape ``(frames, 2)`` (valence, arousal).

    Each column is a sum of three sinusoids with periods in 2-8 s plus a
    little smoothed noise, min-max rescaled to span exactly ``[-1, 1]``.
    ``subject`` / ``video`` are the integer indices (``s03_v1`` -> 3, 1). Frame
    ``t`` of the rendered video shows ``state[t]``; labels are lagged, see
    :func:`lag_labels`.
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    rng = np.random.default_rng([seed, _S_STATE, subject, video])
    t = np.arange(frames, dtype=np.float64) / float(fps)
    out = np.empty((frames, 2), dtype=np.float64)
    for d in range(2):
        periods = rng.uniform(2.0, 8.0, size=3)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
        amps = rng.uniform(0.5, 1.0, size=3)
        x = (amps[:, None] * np.sin(2.0 * np.pi * t[None, :] / periods[:, None] + phases[:, None])).sum(0)
        noise = rng.normal(0.0, 1.0, size=frames)
        x = x + 0.35 * _smooth(noise, sigma=0.5 * fps)
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-9:
            out[:, d] = 0.0
        else:
            # The video's own range is its native label scale; clipped against an ulp of rounding at the ends.
            out[:, d] = np.clip(to_unit(x, (lo, hi)), -1.0, 1.0)
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with reflect padding, normalised to unit std."""
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, radius, mode="reflect") if len(x) > radius else np.pad(x, radius, mode="edge")
    y = np.convolve(padded, k, mode="valid")[: len(x)]
    s = y.std()
    return y / s if s > 1e-12 else y


def lag_labels(states: np.ndarray, lag_frames: int) -> np.ndarray:
    """Annotator delay: ``label[t] = state[max(t - lag_frames, 0)]``."""
    if lag_frames < 0:
        raise ValueError("lag_frames must be >= 0")
    idx = np.maximum(np.arange(len(states)) - lag_frames, 0)
    return states[idx]


def per_second_labels(labels: np.ndarray, fps: int) -> np.ndarray:
    """Mean of per-frame labels over each (possibly partial, last) second: ``ceil(T / fps)`` rows."""
    n = math.ceil(len(labels) / fps)
    return np.stack([labels[i * fps:(i + 1) * fps].mean(axis=0) for i in range(n)])


# ---------------------------------------------------------------------------
# Splits and subject appearance
# ---------------------------------------------------------------------------

def subject_ids(subjects: int) -> list[str]:
    return [f"s{i:02d}" for i in range(subjects)]


def assign_splits(subjects: int, seed: int = 0) -> dict[str, list[str]]:
    """Subject-disjoint ``{"train", "val", "test"}`` lists of subject ids.

    ``test = max(1, round(n / 8))``, ``val = max(1, round(n / 4))``, the rest
    train (8 subjects -> 5/2/1). Which subject lands where is drawn from the
    seed. Raises ``ValueError`` for fewer than 3 subjects.
    """
    if subjects < MIN_SUBJECTS:
        raise ValueError(
            f"subjects must be >= {MIN_SUBJECTS} (at least 1 train, 1 val and 1 test subject); got {subjects}")
    n_test = max(1, int(round(subjects / 8)))
    n_val = max(1, int(round(subjects / 4)))
    ids = subject_ids(subjects)
    perm = np.random.default_rng([seed, _S_SPLIT, subjects]).permutation(subjects)
    test = sorted(ids[i] for i in perm[:n_test])
    val = sorted(ids[i] for i in perm[n_test:n_test + n_val])
    train = sorted(ids[i] for i in perm[n_test + n_val:])
    return {"train": train, "val": val, "test": test}


def _subject_appearance(seed: int, subject: int, size: int, shifted: bool) -> dict:
    rng = np.random.default_rng([seed, _S_SUBJECT, subject])
    scale = rng.uniform(0.85, 1.08)
    ax = size * 0.25 * scale * rng.uniform(0.88, 1.08)  # half-width of the face ellipse
    ay = size * 0.32 * scale * rng.uniform(0.90, 1.06)  # half-height
    # Skin tone: a brownish hue with brightness factor; background a random colour.
    hue_jitter = rng.uniform(-1.0, 1.0, size=3) * np.array([8.0, 8.0, 10.0])
    base_skin = np.array([0.62, 0.74, 0.92])  # B, G, R proportions of a warm skin tone
    if shifted:
        # Very dark or very light skin, background from a brighter / bluer range.
        bright = rng.uniform(80.0, 110.0) if rng.random() < 0.5 else rng.uniform(235.0, 255.0)
        bg = rng.uniform([150.0, 120.0, 60.0], [235.0, 200.0, 140.0])
    else:
        bright = rng.uniform(130.0, 225.0)
        bg = rng.uniform([30.0, 40.0, 40.0], [140.0, 150.0, 130.0])
    skin = np.clip(base_skin * bright + hue_jitter, 40.0, 255.0)
    # Keep the face separable from the background.
    if np.abs(skin - bg).mean() < 45.0:
        bg = np.clip(bg + (-70.0 if skin.mean() > 110 else 70.0), 0.0, 255.0)
    texture = rng.normal(0.0, 7.0, size=(size, size, 1)).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.0)[:, :, None] * 1.6
    background = np.clip(bg[None, None, :] + texture, 0.0, 255.0).astype(np.uint8)
    off = rng.uniform(-0.05, 0.05, size=2) * size
    return {
        "ax": float(ax), "ay": float(ay),
        "skin": tuple(float(c) for c in skin),
        "bg": tuple(float(c) for c in np.round(bg)),
        "background": background,
        "center": (size / 2.0 + off[0], size / 2.0 + 0.02 * size + off[1]),
        "iris": tuple(float(c) for c in rng.uniform([5.0, 8.0, 10.0], [45.0, 40.0, 40.0])),
        "mouth": tuple(float(c) for c in rng.uniform([15.0, 10.0, 30.0], [45.0, 35.0, 80.0])),
        "brow": tuple(float(c) for c in rng.uniform(15.0, 55.0, size=3)),
    }


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def _p(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _blank_mask(rng: np.random.Generator, frames: int, blank_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Runs of 2-6 no-face frames covering about ``blank_rate`` of the video.

    Returns (no_face bool mask, kind int array: 0 face, 1 occluded, 2 blank).
    """
    kind = np.zeros(frames, dtype=np.int8)
    target = int(round(blank_rate * frames))
    if target <= 0 or frames < 2:
        return kind > 0, kind
    target = max(target, 2)
    count, tries = 0, 0
    while count < target and tries < 1000:
        tries += 1
        length = min(int(rng.integers(2, 7)), max(2, target - count))
        if length > frames:
            break
        start = int(rng.integers(0, frames - length + 1))
        lo, hi = max(0, start - 1), min(frames, start + length + 1)
        if kind[lo:hi].any():  # keep runs separated by at least one face frame
            continue
        kind[start:start + length] = 1 if rng.random() < 0.5 else 2
        count += length
    return kind > 0, kind


def _render_video(app: dict, states: np.ndarray, size: int, fps: int, blank_rate: float,
                  rng: np.random.Generator):
    """Yield (frame_bgr, face_row or None) for every frame; face_row = (box4, score, lm10)."""
    frames = len(states)
    valence, arousal = states[:, 0], states[:, 1]
    ax, ay = app["ax"], app["ay"]
    skin, bg = app["skin"], app["bg"]
    bgr_dark = (25.0, 20.0, 20.0)
    thick = max(2, int(round(size / 32)))
    thin = max(1, int(round(size / 64)))

    # Head motion: phase advances at a rate proportional to (arousal + 1).
    amp = 0.07 * size
    rate = 1.4 * np.pi / fps  # rad / frame at a = 0 (0.7 Hz); 1.4 Hz at a = +1, still at a = -1
    phase = np.cumsum((arousal + 1.0) * rate) + rng.uniform(0, 2 * np.pi)
    p2 = rng.uniform(0, 2 * np.pi)
    cx = app["center"][0] + amp * np.sin(phase)
    cy = app["center"][1] + 0.6 * amp * np.sin(1.7 * phase + p2)

    no_face, kind = _blank_mask(rng, frames, blank_rate)
    scores = rng.uniform(0.9, 1.0, size=frames)
    background = app["background"]

    ew = 0.23 * ax  # eye half-width
    eye_dx, eye_dy = 0.40 * ax, -0.20 * ay
    iris_r = 0.72 * ew
    brow_dy, brow_len, brow_tilt = -0.50 * ay, 0.30 * ax, 0.09 * ay
    nose_dy = 0.12 * ay
    mouth_dy, mouth_w, mouth_k = 0.48 * ay, 0.46 * ax, 0.26 * ay
    half = max(ax, ay) * 1.12

    for t in range(frames):
        if kind[t] == 2:
            img = np.empty((size, size, 3), dtype=np.uint8)
            img[:] = np.array(bg, dtype=np.uint8)
            yield img, None
            continue
        img = background.copy()
        x, y = float(cx[t]), float(cy[t])
        v, a = float(valence[t]), float(arousal[t])
        cv2.ellipse(img, _p(x, y), _p(ax, ay), 0, 0, 360, skin, -1, cv2.LINE_AA, _SHIFT)

        eyes = []
        for side in (-1, 1):
            ex, ey = x + side * eye_dx, y + eye_dy
            eyes.append((ex, ey))
            eh = 0.06 * ew + 0.74 * ew * (a + 1.0) / 2.0  # eye half-height: lid closed .. wide open
            cv2.ellipse(img, _p(ex, ey), _p(ew, eh), 0, 0, 360, (240, 240, 240), -1, cv2.LINE_AA, _SHIFT)
            cv2.ellipse(img, _p(ex, ey), _p(iris_r, min(iris_r, 0.95 * eh)), 0, 0, 360,
                        app["iris"], -1, cv2.LINE_AA, _SHIFT)
            cv2.ellipse(img, _p(ex, ey), _p(ew, eh), 0, 0, 360, bgr_dark, thin, cv2.LINE_AA, _SHIFT)
            # Brow: inner end drops for negative valence.
            inner_x, outer_x = ex - side * brow_len * 0.5, ex + side * brow_len * 0.5
            by = y + brow_dy
            pts = np.array([_p(inner_x, by - brow_tilt * v), _p(outer_x, by + brow_tilt * v)], dtype=np.int32)
            cv2.polylines(img, [pts], False, app["brow"], thick, cv2.LINE_AA, _SHIFT)

        nx, ny = x, y + nose_dy
        nose = np.array([_p(x, y - 0.02 * ay), _p(x - 0.08 * ax, ny), _p(x + 0.02 * ax, ny)], dtype=np.int32)
        cv2.polylines(img, [nose], False, bgr_dark, thin, cv2.LINE_AA, _SHIFT)

        # Mouth: y(u) = my + k * v * (0.5 - u^2), u in [-1, 1]; centre lower than corners when smiling.
        my = y + mouth_dy
        u = np.linspace(-1.0, 1.0, 13)
        px = x + mouth_w * u
        py = my + mouth_k * v * (0.5 - u ** 2)
        mouth = np.array([_p(a_, b_) for a_, b_ in zip(px, py)], dtype=np.int32)
        cv2.polylines(img, [mouth], False, app["mouth"], thick + 1, cv2.LINE_AA, _SHIFT)

        x1 = int(np.clip(math.floor(x - half), 0, size))
        y1 = int(np.clip(math.floor(y - half), 0, size))
        x2 = int(np.clip(math.ceil(x + half), 0, size))
        y2 = int(np.clip(math.ceil(y + half), 0, size))
        if kind[t] == 1:
            # Occluder: a big box of background colour over the whole face.
            cv2.rectangle(img, (x1 - 2, y1 - 2), (x2 + 2, y2 + 2), bg, -1)
            yield img, None
            continue
        lm = (eyes[0][0], eyes[0][1], eyes[1][0], eyes[1][1], nx, ny,
              float(px[0]), float(py[0]), float(px[-1]), float(py[-1]))
        yield img, ((x1, y1, x2, y2), float(scores[t]), lm)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def _face_row(t: int, face) -> list[str]:
    if face is None:
        return [str(t), "", "", "", "", "0.0000"] + [""] * 10
    box, score, lm = face
    return [str(t)] + [str(b) for b in box] + [f"{score:.4f}"] + [f"{c:.2f}" for c in lm]


def _write_csv(path: pathlib.Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _params(**kw) -> dict:
    return {"generator": GENERATOR, "version": VERSION, **kw}


def _check_existing(out_dir: pathlib.Path, params: dict) -> pathlib.Path | None:
    """Manifest path if out_dir holds a complete dataset with these params, None if empty/absent."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return None
    meta_path, manifest = out_dir / "metadata.json", out_dir / "manifest.csv"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise FileExistsError(
            f"{out_dir} is not empty and does not hold a synthetic dataset (no readable metadata.json); "
            "choose another out_dir or remove it") from None
    diff = {k: (meta.get(k), v) for k, v in params.items() if meta.get(k) != v}
    if diff:
        raise FileExistsError(
            f"{out_dir} holds a synthetic dataset with different parameters "
            f"(existing vs requested: {diff}); choose another out_dir or remove it")
    if not manifest.is_file():
        raise FileExistsError(f"{out_dir} has metadata.json but no manifest.csv; remove it and regenerate")
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            for col in ("path", "labels", "faces"):
                if not (out_dir / row[col]).is_file():
                    raise FileExistsError(f"{out_dir} is incomplete: missing {row[col]}; remove it and regenerate")
    return manifest


def _write_video(folder: pathlib.Path, vid: str, app: dict, seed: int, si: int, vi: int, frames: int, fps: int,
                 size: int, lag_frames: int, blank_rate: float, variant: str) -> tuple[str, str, str]:
    """Render video ``vid`` of subject ``si`` into ``folder`` (``videos/``, ``labels/``, ``faces/``); returns the three
    paths relative to ``folder``."""
    states = render_states(seed, si, vi, frames, fps)
    rng = np.random.default_rng([seed, _S_VIDEO, si, vi])
    video_rel = f"videos/{vid}.mp4"
    writer = cv2.VideoWriter(str(folder / video_rel), cv2.VideoWriter_fourcc(*FOURCC), float(fps), (size, size), True)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {video_rel} with fourcc {FOURCC}")
    face_rows = []
    try:
        for t, (img, face) in enumerate(_render_video(app, states, size, fps, blank_rate, rng)):
            writer.write(img)
            face_rows.append(_face_row(t, face))
    finally:
        writer.release()
    labels = lag_labels(states, lag_frames)
    if variant == "per_second":
        labels = per_second_labels(labels, fps)
        header = ["second", "valence", "arousal"]
    else:
        header = ["frame", "valence", "arousal"]
    labels_rel, faces_rel = f"labels/{vid}.csv", f"faces/{vid}.csv"
    _write_csv(folder / labels_rel, header, ([str(i), f"{r[0]:.6f}", f"{r[1]:.6f}"] for i, r in enumerate(labels)))
    _write_csv(folder / faces_rel, FACE_COLUMNS, face_rows)
    return video_rel, labels_rel, faces_rel


def synthesize_heldout(out_dir, dataset: str | pathlib.Path, video: int = 0) -> dict[str, pathlib.Path]:
    """One more video, of a new subject, rendered with the generator parameters of the dataset whose folder (or
    manifest) is ``dataset``: a face no trial, validation or test split has seen, for trying a promoted model.

    The subject is number ``subjects`` of the dataset (``s08`` for the default 8 subjects), so its appearance and
    states come from streams the dataset never drew. Returns the paths of ``video``, ``labels`` and ``faces``.
    """
    dataset = pathlib.Path(dataset)
    meta = json.loads(((dataset.parent if dataset.is_file() else dataset) / "metadata.json").read_text())
    si, out_dir = int(meta["subjects"]), pathlib.Path(out_dir)
    for sub in ("videos", "labels", "faces"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    app = _subject_appearance(meta["seed"], si, meta["size"], meta["variant"] == "subject_shift")
    paths = _write_video(out_dir, f"s{si:02d}_v{video}", app, meta["seed"], si, video, meta["frames"], meta["fps"],
                         meta["size"], meta["lag_frames"], meta["blank_rate"], meta["variant"])
    return {key: out_dir / rel for key, rel in zip(("video", "labels", "faces"), paths)}


def synthesize(out_dir, *, subjects: int = 8, videos_per_subject: int = 2, frames: int = 250, fps: int = 25,
               size: int = 96, lag_frames: int = 4, blank_rate: float = 0.04, variant: str = "per_frame",
               seed: int = 0, progress: bool = True, labelled_train_subjects: int | None = None) -> pathlib.Path:
    """Write the synthetic dataset to ``out_dir`` and return the path of ``manifest.csv``.

    ``labelled_train_subjects``: keep labels for only the first that many train subjects; the other train subjects'
    rows get an empty ``labels`` cell (unlabelled video for ``emotune pretrain``; their label files are still written,
    so a test can score what pretraining did not see). None: every video labelled.

    See the module docstring for the rendering rules and file formats. If
    ``out_dir`` already holds a complete dataset with the same parameters its
    manifest is returned without rewriting anything; if it holds anything
    else a ``FileExistsError`` is raised. Raises ``ValueError`` for an unknown
    ``variant``, fewer than 3 subjects or invalid sizes.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if videos_per_subject < 1 or frames < 1 or fps < 1:
        raise ValueError("videos_per_subject, frames and fps must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32 pixels")
    if not 0.0 <= blank_rate < 0.5:
        raise ValueError("blank_rate must be in [0, 0.5)")
    if lag_frames < 0:
        raise ValueError("lag_frames must be >= 0")
    splits = assign_splits(subjects, seed)  # validates subjects
    if labelled_train_subjects is not None and not 1 <= labelled_train_subjects <= len(splits["train"]):
        raise ValueError(f"labelled_train_subjects must be between 1 and the {len(splits['train'])} train subjects")
    unlabelled = set(splits["train"][labelled_train_subjects:]) if labelled_train_subjects is not None else set()

    out_dir = pathlib.Path(out_dir)
    params = _params(seed=int(seed), subjects=int(subjects), videos_per_subject=int(videos_per_subject),
                     frames=int(frames), fps=int(fps), size=int(size), lag_frames=int(lag_frames),
                     blank_rate=float(blank_rate), variant=variant,
                     **({"labelled_train_subjects": int(labelled_train_subjects)}
                        if labelled_train_subjects is not None else {}))
    existing = _check_existing(out_dir, params)
    if existing is not None:
        return existing

    split_of = {s: name for name, ss in splits.items() for s in ss}
    label_rate = 1 if variant == "per_second" else int(fps)
    jobs = [(si, vi) for si in range(subjects) for vi in range(videos_per_subject)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the final dataset should be readable like any folder
    try:
        for sub in ("videos", "labels", "faces"):
            (tmp / sub).mkdir()
        apps = {}
        manifest_rows = []
        it = jobs
        from trainables import console

        if progress and console.bars():
            from tqdm import tqdm

            it = tqdm(jobs, desc="synth videos", unit="video", file=console.bar_stream())
        for si, vi in it:
            sid = f"s{si:02d}"
            vid = f"{sid}_v{vi}"
            if si not in apps:
                shifted = variant == "subject_shift" and split_of[sid] != "train"
                apps[si] = _subject_appearance(seed, si, size, shifted)
            video_rel, labels_rel, faces_rel = _write_video(tmp, vid, apps[si], seed, si, vi, frames, fps, size,
                                                            lag_frames, blank_rate, variant)
            manifest_rows.append([vid, video_rel, sid, split_of[sid], "" if sid in unlabelled else labels_rel,
                                  faces_rel])

        _write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, manifest_rows)
        meta = dict(params)
        meta.update({
            "label_rate": label_rate,
            "dims": list(DIMS),
            "splits": splits,
            "fourcc": FOURCC,
            "label_rule": "label[t] = state[max(t - lag_frames, 0)]"
                          + ("; per_second rows are the mean over each second" if variant == "per_second" else ""),
        })
        # metadata.json last: its presence marks a complete dataset.
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")

        if out_dir.exists() and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Someone else may have finished the same dataset concurrently.
            existing = _check_existing(out_dir, params)
            if existing is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "manifest.csv"
