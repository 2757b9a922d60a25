"""The MLflow pyfunc of the predictor, logged with MLflow's "models from code".

MLflow runs this file to rebuild the model, so the class is not pickled; the fitted models travel as one
artifact (``bundle``) and the embedding weights come from the installed package, never from the run.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RepeatContactPyfunc(PythonModel):
    """Input: contact rows as in a log (plus an optional ``is_history`` flag); output: one row per scored contact."""

    def load_context(self, context: Any) -> None:
        import joblib

        from predictor.config import get_settings

        self.model = joblib.load(context.artifacts["bundle"])
        self.model.embedder(cache_dir=str(get_settings().embedding.cache_dir))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from predictor.model.fitted import predict_log

        return predict_log(self.model, model_input)


mlflow.models.set_model(RepeatContactPyfunc())
