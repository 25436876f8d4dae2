"""The ``emotune data`` commands (``synth``, ``prepare``, ``manifest``, ``fetch-weights``): each takes the parsed
arguments of :mod:`cluster.cli`'s parser, does its work here in ``trainables.prepare`` and returns the exit status."""
from __future__ import annotations

import os
from pathlib import Path

from trainables.console import say, warn
from trainables.errors import UserError


def cmd_synth(a) -> int:
    from trainables.prepare.synth import synthesize

    try:
        manifest = synthesize(a.out, subjects=a.subjects, videos_per_subject=a.videos_per_subject, frames=a.frames,
                              fps=a.fps, size=a.size, lag_frames=a.lag_frames, variant=a.variant, seed=a.seed,
                              labelled_train_subjects=a.labelled_train_subjects)
    except (ValueError, FileExistsError) as err:  # a setting out of range, or --out holds something else
        raise UserError(f"data synth: {err}") from None
    say(f"manifest: {manifest}")
    return 0


def cmd_prepare(a) -> int:
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare

    if a.weights_dir:
        os.environ["EMOTUNE_FACE_WEIGHTS"] = str(Path(a.weights_dir).resolve())  # read by the detector (and workers)
    reg = Registration(size=a.size, margin=a.margin, min_score=a.min_score, grayscale=a.grayscale,
                       detector=a.detector, align=a.align, fps=a.fps, smooth=a.smooth, face_detector=a.face_detector,
                       detect_width=a.detect_width, detect_every=a.detect_every)
    index, summary = prepare(a.manifest, a.cache, reg, workers=a.workers, index_path=a.index,
                             min_face_share=a.min_face_share, warn_face_share=a.warn_face_share)
    say("\n".join(summary.lines()))
    say(f"dataset index: {index}")
    return 0


def cmd_manifest(a) -> int:
    import warnings

    from trainables.prepare.splits import build_manifest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = build_manifest(a.videos, a.labels, label_format=a.format, subject_pattern=a.subject_pattern, out=a.out,
                             seed=a.seed, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
                             faces_dir=a.faces)
    for w in caught:
        warn(f"warning: {w.message}")
    say(f"manifest: {out}")
    return 0


def cmd_fetch_weights(a) -> int:
    from trainables.prepare.faces import fetch_weights

    for path in fetch_weights(a.to, detector=a.face_detector):
        say(path)
    return 0
