"""Finding faces, one module per concern (imported here, so every detector is registered):

* :mod:`~trainables.prepare.faces.base` -- the ``Detection`` type, the ``FaceDetector`` protocol and the registry
  (``create_detector(name, **kwargs)``, ``list_detectors()``);
* :mod:`~trainables.prepare.faces.opencv` -- ``opencv``: OpenCV's Haar cascade (offline, no landmarks);
* :mod:`~trainables.prepare.faces.face_alignment` -- ``face_alignment``: S3FD/BlazeFace/... boxes + FAN landmarks;
* :mod:`~trainables.prepare.faces.weights` -- the face_alignment weight files: lookup (never a download during a run)
  and ``fetch_weights`` for a machine with internet;
* :mod:`~trainables.prepare.faces.track` -- following one face through a video: main face per frame, box smoothing,
  sparse detection on reduced frames with boxes carried between detections (``SparseFaceTrack``);
* :mod:`~trainables.prepare.faces.precomputed` -- faces a dataset ships already cropped and aligned (Aff-Wild2).
"""
from __future__ import annotations

from trainables.prepare.faces.base import (Detection, DetectorUnavailableError, FaceDetector, create_detector,
                                           list_detectors, register_detector)
from trainables.prepare.faces.face_alignment import FaceAlignmentDetector, landmarks68_to_5
from trainables.prepare.faces.opencv import OpenCVHaarDetector, haar_cascade_path, haar_score
from trainables.prepare.faces.precomputed import read_crops_folder
from trainables.prepare.faces.track import SparseFaceTrack, box_iou, patch_similarity, pick_main_face, smooth_boxes
from trainables.prepare.faces.weights import (FA_FACE_DETECTORS, WEIGHTS_ENV, MissingWeightsError, WeightFile,
                                              fetch_weights, resolve_weights, weight_files, weight_folders)

__all__ = [
    "Detection", "FaceDetector", "register_detector", "create_detector", "list_detectors", "pick_main_face",
    "smooth_boxes", "SparseFaceTrack", "box_iou", "patch_similarity", "landmarks68_to_5", "haar_score",
    "haar_cascade_path", "OpenCVHaarDetector",
    "FaceAlignmentDetector", "MissingWeightsError", "DetectorUnavailableError", "WeightFile", "weight_files",
    "weight_folders", "resolve_weights", "fetch_weights", "read_crops_folder", "FA_FACE_DETECTORS", "WEIGHTS_ENV",
]
