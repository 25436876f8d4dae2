"""The weight files of the ``face_alignment`` detector: which files, where they are looked up, and fetching them.

Weights are looked up locally (``weights_dir=``, ``$EMOTUNE_FACE_WEIGHTS``, the torch hub cache) and never downloaded
during a run: missing files raise ``MissingWeightsError``; ``fetch_weights`` (``emotune data fetch-weights``) downloads
them on a machine with internet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from trainables.errors import DataError

__all__ = ["FA_FACE_DETECTORS", "MissingWeightsError", "WEIGHTS_ENV", "WeightFile", "fetch_weights", "resolve_weights",
           "weight_files", "weight_folders"]

#: Environment variable naming a folder that holds face-alignment weight files.
WEIGHTS_ENV = "EMOTUNE_FACE_WEIGHTS"


class MissingWeightsError(DataError, FileNotFoundError):
    """Weight files needed by a detector are not on this machine (a user error, and a missing file: both
    ``except DataError`` and ``except FileNotFoundError`` catch it).

    Attributes:
        missing: file names that were not found.
        folders: folders that were searched, in order.
    """

    def __init__(self, message: str, missing: list[str], folders: list[Path]) -> None:
        super().__init__(message)
        self.missing = missing
        self.folders = folders


@dataclass(frozen=True)
class WeightFile:
    """A weight file face_alignment needs: its file name (as the package caches it), the URL it comes from, and what
    it is for."""

    name: str
    url: str
    purpose: str


#: face_alignment detectors this project supports (``dlib`` needs dlib and downloads nothing; ``folder`` reads boxes
#: from files; neither fits here).
FA_FACE_DETECTORS = ("sfd", "blazeface", "retinaface", "yunet", "scrfd")


def _url_name(url: str) -> str:
    # torch.hub and face_alignment name a cached file after the URL path's last part (query strings dropped).
    return os.path.basename(urlparse(url).path)


def weight_files(face_detector: str = "sfd", back_model: bool = False) -> list[WeightFile]:
    """The weight files face_alignment 1.5 loads for 2D landmarks with ``face_detector``.

    Names and URLs are read from the installed package's own tables, so they follow the package version.

    Args:
        face_detector: one of ``FA_FACE_DETECTORS``.
        back_model: for ``blazeface``, the back-camera model (256 px input) instead of the front one.
    Returns:
        The FAN landmark network first, then the detector's file(s).
    Raises:
        ValueError: unsupported detector name.
    """
    if face_detector not in FA_FACE_DETECTORS:
        raise ValueError(f"face_alignment face detector {face_detector!r} is not supported; valid: "
                         f"{', '.join(FA_FACE_DETECTORS)}")
    from face_alignment import api as fa_api  # imported here: the package is heavy (numba, torch)

    fan_url = fa_api.models_urls["2DFAN-4"]
    files = [WeightFile(_url_name(fan_url), fan_url, "FAN 2D landmark network (2DFAN-4)")]
    if face_detector == "sfd":
        from face_alignment.detection.sfd import sfd_detector as mod
        url = mod.models_urls["s3fd"]
        files.append(WeightFile(_url_name(url), url, "S3FD face detector"))
    elif face_detector == "blazeface":
        from face_alignment.detection.blazeface import blazeface_detector as mod
        kind = "blazeface_back" if back_model else "blazeface"
        for part, what in (("weights", "BlazeFace detector weights"), ("anchors", "BlazeFace anchors")):
            url = mod.models_urls[f"{kind}_{part}"]
            files.append(WeightFile(_url_name(url), url, what + (" (back model)" if back_model else "")))
    elif face_detector == "retinaface":
        from face_alignment.detection.retinaface import retinaface_detector as mod
        url = mod.models_urls["retinaface_mobilenet0.25"]
        files.append(WeightFile(_url_name(url), url, "RetinaFace MobileNet-0.25 face detector"))
    elif face_detector == "yunet":
        from face_alignment.detection.yunet import yunet_detector as mod
        # The package stores this one under an explicit file name (load_file_from_url(..., file_name=...)).
        files.append(WeightFile("face_detection_yunet_2023mar.onnx", mod.model_url, "YuNet face detector (ONNX)"))
    else:  # scrfd
        from face_alignment.detection.scrfd import scrfd_detector as mod
        files.append(WeightFile("scrfd_2.5g_bnkps.onnx", mod.model_url, "SCRFD 2.5G face detector (ONNX, needs "
                                                                        "onnxruntime)"))
    return files


def weight_folders(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for weight files, in order: ``weights_dir`` (if given), ``$EMOTUNE_FACE_WEIGHTS`` (if set),
    then the torch hub cache ``torch.hub.get_dir()/checkpoints`` (where face_alignment itself caches downloads)."""
    import torch

    folders: list[Path] = []
    if weights_dir is not None:
        folders.append(Path(weights_dir).expanduser())
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    if env:
        folders.append(Path(env).expanduser())
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    unique: list[Path] = []
    for f in folders:
        if f not in unique:
            unique.append(f)
    return unique


def resolve_weights(face_detector: str = "sfd", weights_dir: str | Path | None = None,
                    back_model: bool = False) -> dict[str, Path]:
    """Find every weight file the face_alignment detector needs, without downloading anything.

    Args:
        face_detector: one of ``FA_FACE_DETECTORS``.
        weights_dir: a folder searched first (see ``weight_folders``).
        back_model: BlazeFace back model.
    Returns:
        File name -> path of the first folder holding it.
    Raises:
        MissingWeightsError: one or more files are in none of the folders (the message lists each file, its URL and
            the folders, and how to fetch them).
    """
    folders = weight_folders(weights_dir)
    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    for wf in weight_files(face_detector, back_model):
        hit = next((f / wf.name for f in folders if (f / wf.name).is_file()), None)
        if hit is None:
            missing.append(wf)
        else:
            found[wf.name] = hit
    if missing:
        lines = "\n".join(f"  - {wf.name} ({wf.purpose}; from {wf.url})" for wf in missing)
        where = "\n".join(f"  - {f}" for f in folders)
        raise MissingWeightsError(
            f"face detector 'face_alignment' (face_detector={face_detector!r}) needs weight files that are not on this "
            f"machine, and nothing is downloaded at run time:\n{lines}\nPut each file in one of these folders:\n{where}\n"
            f"(or pass weights_dir= / set ${WEIGHTS_ENV}). On a machine with internet, "
            f"`emotune data fetch-weights --to DIR` downloads them into DIR; copy DIR here and set {WEIGHTS_ENV}=DIR.",
            [wf.name for wf in missing], folders)
    return found


def fetch_weights(to_dir: str | Path, detector: str = "sfd", *, back_model: bool = False, dry_run: bool = False,
                  progress: bool = True) -> list[Path]:
    """Download the weight files of the face_alignment detector into ``to_dir`` (for ``emotune data fetch-weights``).

    Files already in ``to_dir`` are kept. Each download goes to a temporary name first and is renamed when complete,
    so an interrupted download never leaves a truncated file under the real name.

    Args:
        to_dir: destination folder (created).
        detector: face_alignment face detector, one of ``FA_FACE_DETECTORS``.
        back_model: BlazeFace back model.
        dry_run: only compute the destination paths; create and download nothing.
        progress: show download progress bars.
    Returns:
        Destination path of every needed file (FAN first).
    Raises:
        ValueError: unsupported detector.
        OSError / urllib errors: a download failed (the partial file is removed).
    """
    to_dir = Path(to_dir).expanduser()
    files = weight_files(detector, back_model)
    paths = [to_dir / wf.name for wf in files]
    if dry_run:
        return paths
    import torch

    to_dir.mkdir(parents=True, exist_ok=True)
    for wf, dst in zip(files, paths):
        if dst.is_file():
            continue
        part = dst.with_name(dst.name + ".part")
        try:
            torch.hub.download_url_to_file(wf.url, str(part), progress=progress)
            part.replace(dst)
        finally:
            part.unlink(missing_ok=True)
    return paths
