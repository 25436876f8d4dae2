"""The MLflow pyfunc form of a promoted model: ``mlflow.pyfunc.load_model("models:/emotune@production")`` in any
process where the emotune package is installed, then ``.predict(pandas.DataFrame({"video": [path, ...]}),
params={"detector": "opencv"})``: the rows ``emotune predict`` writes to its CSV files, plus a ``video`` column.

The model's one artifact ``bundle`` is a :class:`trainables.predict.ModelBundle` file (weights, trial config,
registration, post-processing, label timeline); prediction is :class:`trainables.predict.Predictor`.
"""
from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd

#: Params ``predict`` takes (their defaults), recorded in the model signature.
PARAMS = {"detector": "opencv", "faces": ""}


class EmotuneVideoModel(mlflow.pyfunc.PythonModel):
    """Valence/arousal per label step of each video named in the input's ``video`` column."""

    def load_context(self, context):
        from trainables.predict import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"])
        self._predictors = {}

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


def signature():
    from mlflow.models import infer_signature

    return infer_signature(pd.DataFrame({"video": ["clip.mp4"]}), None, params=dict(PARAMS))


# Models from code: MLflow logs this file with the model and runs it when the model is loaded, so the registered model
# holds no pickled Python object (loading a model then runs only the code of the emotune package).
mlflow.models.set_model(EmotuneVideoModel())
