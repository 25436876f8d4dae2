"""The MLflow pyfunc form of a promoted model: ``mlflow.pyfunc.load_model("models:/emotune@production")`` in any
process where the emotune package is installed, then ``.predict(pandas.DataFrame({"video": [path, ...]}),
params={"detector": "opencv"})``: the rows ``emotune predict`` writes to its CSV files, plus a ``video`` column.

The model's one artifact ``bundle`` is a :class:`trainables.predict.ModelBundle` file (weights, trial config,
registration, post-processing, label timeline); prediction is :class:`trainables.predict.Predictor`.

Loading leaves nothing in the temporary folder once the process ends: the bundle is read into memory, and the copy of
the model that ``mlflow.pyfunc.load_model`` downloads from a URI into a fresh temporary folder (which MLflow never
removes) is removed when the model object goes (MLflow holds the last one it loaded), at the latest when the process
ends (:func:`_mlflow_download`). Each prediction's crop file lives in a temporary folder removed when the video is
done.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd

#: Params ``predict`` takes (their defaults), recorded in the model signature.
PARAMS = {"detector": "opencv", "faces": ""}


class EmotuneVideoModel(mlflow.pyfunc.PythonModel):
    """Valence/arousal per label step of each video named in the input's ``video`` column."""

    def load_context(self, context):
        from trainables.predict import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])  # read whole: the file is not needed afterwards
        self._predictors = {}
        download = _mlflow_download(context.artifacts["bundle"])
        if download is not None:  # when this object goes, at the latest when the process ends
            weakref.finalize(self, shutil.rmtree, str(download), ignore_errors=True)

    def _predictor(self, detector: str):
        from trainables.predict import Predictor

        if detector not in self._predictors:
            self._predictors[detector] = Predictor(self.bundle, detector=detector, progress=False)
        return self._predictors[detector]

    # The DataFrame hint tells MLflow that no schema is inferred from the hint (the logged signature states the input)
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with a ``video`` column (paths), optionally ``faces`` (face sidecars, for the
        ``precomputed`` detector). ``params``: ``detector`` (``opencv`` by default)."""
        params = {**PARAMS, **(params or {})}
        predictor = self._predictor(str(params["detector"]) or "opencv")
        faces = list(model_input["faces"]) if "faces" in model_input.columns else [None] * len(model_input)
        tables = []
        for video, face in zip(model_input["video"], faces):
            table = predictor.predict_video(str(video), faces=face or None)
            table.insert(0, "video", str(video))
            tables.append(table)
        return pd.concat(tables, ignore_index=True)


def _mlflow_download(bundle_path: str) -> Path | None:
    """The model folder that the ``mlflow.pyfunc.load_model`` call loading this model downloaded for it, or None.

    Given a URI (``models:/...``, ``runs:/...``) and no ``dst_path``, MLflow copies the whole model (weights included)
    into a fresh ``tempfile.mkdtemp()`` folder and never removes it, so every load would leave a copy behind. That
    folder is recognised in the ``load_model`` frame on the stack: no ``dst_path``, a model URI that is no local
    path, and the downloaded folder (``local_path``) is this model's and sits directly in the temporary folder. In
    any other case the folder is someone else's and is kept: a ``dst_path`` the caller chose, a local model read in
    place (serving workers share one download), a local artifact store's own folder, or an MLflow whose
    ``load_model`` is laid out differently.
    """
    try:
        root = Path(bundle_path).resolve().parents[1]  # <model>/artifacts/bundle.pt
        frame = sys._getframe(1)
        while frame is not None and not (frame.f_code.co_name == "load_model"
                                         and frame.f_globals.get("__name__") == "mlflow.pyfunc"):
            frame = frame.f_back
        if frame is None:
            return None
        uri, dst, local = (frame.f_locals.get(k) for k in ("model_uri", "dst_path", "local_path"))
        if dst is not None or not isinstance(uri, str) or not isinstance(local, str) or os.path.exists(uri):
            return None
        local_dir = Path(local).resolve()
        if local_dir != root or local_dir.parent != Path(tempfile.gettempdir()).resolve():
            return None
        return local_dir
    except Exception:  # finding it is a courtesy: a model that loads must not fail here
        return None


def signature():
    from mlflow.models import infer_signature

    return infer_signature(pd.DataFrame({"video": ["clip.mp4"]}), None, params=dict(PARAMS))


# Models from code: MLflow logs this file with the model and runs it when the model is loaded, so the registered model
# holds no pickled Python object (loading a model then runs only the code of the emotune package).
mlflow.models.set_model(EmotuneVideoModel())
