"""The servable ensemble: a weighted mean of its members' softmax outputs, temperature-scaled when
the ensemble was calibrated (calibrate=true): softmax(log(mean) / T), T fitted on validation.

Logged as an MLflow "model from code": MLflow stores this file with the model and runs it at
load time, so loading or serving the ensemble needs Keras and MLflow, not the simpsons package
(this file imports nothing from it). Each member is a logged Keras model that resizes and
preprocesses raw RGB images itself, so the ensemble takes images of any size.

`predict`'s type hints are ones MLflow accepts without inferring a schema from them (numpy
arrays): the logged signature describes the 4-D image tensor. Without hints, MLflow 3 warns
"Add type hints to the `predict` method" each time the class is defined: when the model is
logged, when its input example is checked, and at every load.
"""

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

# As simpsons.ensembling.maths.PROBABILITY_FLOOR (not imported: see above): the served outputs must be
# the logged ones, so the floor and the formula are the same.
PROBABILITY_FLOOR = 1e-30


class SoftmaxAverage(PythonModel):
    """model_config: {"members": [artifact names], "member_weights": [floats], "class_names": [...],
    "temperature": a float, or null (absent in ensembles logged before calibration existed): no scaling}."""

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config
        self.weights = np.asarray(config["member_weights"], dtype=np.float64)
        self.temperature = config.get("temperature")
        self.members = [mlflow.keras.load_model(context.artifacts[name]) for name in config["members"]]

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.float32)
        outputs = [member.predict(images, verbose=0).astype(np.float64) for member in self.members]
        averaged = np.tensordot(self.weights, np.stack(outputs), axes=1)
        if self.temperature is not None:
            averaged = _temperature_scaled(averaged, self.temperature)
        return averaged.astype(np.float32)


def _temperature_scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row."""
    logits = np.log(np.clip(probabilities, PROBABILITY_FLOOR, None)) / temperature
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


mlflow.models.set_model(SoftmaxAverage())
