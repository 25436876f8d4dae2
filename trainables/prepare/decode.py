"""Video decoding with decord, in bounded-memory chunks."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from trainables.errors import DataError


class VideoDecodeError(DataError):
    """A video that decord cannot decode (missing, empty, truncated, corrupt); the message names the file."""


class VideoTooSmallError(DataError):
    """A video whose frames are smaller than ``data prepare`` takes (``trainables.shapes.MIN_FRAME_SIDE``)."""


def check_frame_size(path: str | Path) -> None:
    """Refuse a video whose frames are too small to decode, detect and crop (``trainables.shapes.frame_verdict``).

    The size is the one the container states, read with OpenCV without decoding a frame: decord fails on the first
    chunk of some small videos (48 pixels wide) with an internal buffer-size message. A video OpenCV cannot read
    passes here and is left to decord.

    Raises:
        VideoTooSmallError: naming the video, its frame size and the smallest one taken.
    """
    import cv2

    from trainables.shapes import frame_verdict

    cap = cv2.VideoCapture(str(path))
    try:
        height, width = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        cap.release()
    if height > 0 and width > 0:
        verdict = frame_verdict(height, width)
        if not verdict.ok:
            raise VideoTooSmallError(f"video {path}: {verdict.reason}")


def open_video(path: str | Path):
    """Open ``path`` with decord and check it has frames and a usable frame rate.

    Returns:
        (reader, fps, num_frames)
    Raises:
        VideoDecodeError: empty, truncated or non-video file, no frames, or a frame rate that is 0 or missing.
    """
    import decord  # imported here so that modules importing this one stay light

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoDecodeError(f"video {path} is missing or empty (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError (a RuntimeError) with ffmpeg's text
        raise VideoDecodeError(f"video {path} cannot be decoded: {str(exc).splitlines()[0][:200]}") from None
    n = len(reader)
    fps = float(reader.get_avg_fps() or 0.0)
    if n == 0:
        raise VideoDecodeError(f"video {path} has no frames")
    if not np.isfinite(fps) or fps <= 0:
        raise VideoDecodeError(f"video {path} reports frame rate {fps}; a positive fps is required")
    return reader, fps, n


def iter_frames(reader, num_frames: int, chunk: int = 64, indices: np.ndarray | None = None,
                path: str | Path | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (position of the chunk's first frame in ``indices``, uint8 RGB frames (k, H, W, 3)) in chunks of at most
    ``chunk`` frames, so a long video never sits in memory whole. ``indices`` (sorted source frame numbers, e.g. the
    frames kept at a target fps) defaults to every frame.

    Raises:
        VideoDecodeError: a chunk cannot be decoded (a file corrupt past its index); ``path`` names it in the message.
    """
    if indices is None:
        indices = np.arange(num_frames)
    for start in range(0, len(indices), chunk):
        idx = [int(i) for i in indices[start:start + chunk]]
        try:
            frames = reader.get_batch(idx).asnumpy()
        except Exception as exc:  # decord raises DECORDError (a RuntimeError) with ffmpeg's text
            raise VideoDecodeError(f"video {path if path is not None else '(unnamed)'}: frames {idx[0]}..{idx[-1]} "
                                   f"cannot be decoded: {str(exc).splitlines()[0][:200]}") from None
        yield start, frames
