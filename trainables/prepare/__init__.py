"""What runs once per dataset (``emotune data prepare``, ``data manifest``, ``data synth``), in the order the data
flows:

1. ``splits`` -- build a manifest from folders of videos and label files, with subject-disjoint splits or folds;
   ``synth`` writes a synthetic dataset in the same layout.
2. ``manifest`` -- read and validate a manifest: one row per video (id, path, subject, split, label file, faces).
3. ``adapters`` -- read each dataset's label format into one ``LabelTrack`` on [-1, 1]; ``sidecar`` reads precomputed
   face sidecars (and plain per-frame label CSVs).
4. ``decode`` -- decode a video with decord in bounded chunks.
5. ``faces`` -- find faces: one module per detector backend, weight lookup, main-face tracking, pre-cropped folders.
6. ``registration`` -- the registration settings and the crops: coarse (around a box) or fine (5-point alignment).
7. ``build`` -- write one cache entry per video (content-addressed, atomic).
8. ``run`` -- the driver: every video of a manifest -> cache entries + the dataset index, with a summary.
9. ``folds`` -- the subject folds of a cross-validated sweep over a dataset index (planned by the sweep's driver).

Trials read the result with :mod:`trainables.data` (the cache format lives there); imports go one way, from here to
``trainables.data``. Errors a user can fix are ``trainables.errors.DataError``s: ``ManifestError``,
``LabelFileError``, ``VideoDecodeError``, ``MissingWeightsError``, ``DetectorUnavailableError``.
"""
