"""Faces a dataset distributes already cropped and aligned (Aff-Wild2's ``cropped_aligned`` folders): read, not
detected. (Precomputed boxes and landmarks, the other ``precomputed`` source, are read by
``trainables.prepare.sidecar.read_face_sidecar``.)"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from trainables.prepare.sidecar import LabelFileError

__all__ = ["read_crops_folder"]

_CROP_NAME = re.compile(r"^(\d+)\.(jpg|jpeg|png|bmp)$", re.IGNORECASE)


def read_crops_folder(folder: str | Path, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder of already cropped and aligned face frames, as Aff-Wild2 distributes them.

    Files are named by 1-based frame number (``00001.jpg``, ``00002.jpg``, ...; any number of digits, .jpg/.jpeg/
    .png/.bmp); a missing number means no face on that frame. Hidden files (``.DS_Store``) are ignored.

    Args:
        folder: the folder.
        num_frames: the video's frame count; default the largest frame number (frames after the last file cannot be
            known from the folder alone).
    Returns:
        frames (T, H, W, 3) uint8 RGB (black where there is no file) and valid (T,) bool.
    Raises:
        LabelFileError: the folder does not exist; no image in the folder; a file whose name is not a frame number;
            frame number 0; two files for the same frame; a frame number beyond ``num_frames``; images of different
            sizes; an unreadable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LabelFileError(f"face crops folder {folder} does not exist")
    numbered: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        m = _CROP_NAME.match(p.name)
        if m is None:
            raise LabelFileError(f"face crops folder {folder}: file {p.name!r} is not named by frame number; allowed: "
                                 f"1-based numbers with .jpg/.jpeg/.png/.bmp, e.g. 00001.jpg")
        idx = int(m.group(1))
        if idx == 0:
            raise LabelFileError(f"face crops folder {folder}: file {p.name!r} has frame number 0, but numbers are "
                                 "1-based")
        if idx in numbered:
            raise LabelFileError(f"face crops folder {folder}: files {numbered[idx].name!r} and {p.name!r} are both "
                                 f"frame {idx}")
        numbered[idx] = p
    if not numbered:
        raise LabelFileError(f"face crops folder {folder} contains no frame images (expected 00001.jpg, 00002.jpg, "
                             "...)")
    last = max(numbered)
    total = last if num_frames is None else int(num_frames)
    if last > total:
        raise LabelFileError(f"face crops folder {folder}: file {numbered[last].name!r} is frame {last} but the video "
                             f"has {total} frames")
    frames: np.ndarray | None = None
    valid = np.zeros(total, dtype=bool)
    for idx in sorted(numbered):
        path = numbered[idx]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise LabelFileError(f"face crops folder {folder}: image {path.name!r} cannot be read")
        if frames is None:
            frames = np.zeros((total, *img.shape), dtype=np.uint8)
        elif img.shape != frames.shape[1:]:
            raise LabelFileError(f"face crops folder {folder}: image {path.name!r} is {img.shape[1]}x{img.shape[0]} "
                                 f"but the first one is {frames.shape[2]}x{frames.shape[1]}; all crops must have one "
                                 "size")
        frames[idx - 1] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        valid[idx - 1] = True
    assert frames is not None
    return frames, valid
