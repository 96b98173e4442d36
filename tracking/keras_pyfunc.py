"""The logged model's code (MLflow "models from code"): loads the run's best `.keras`
checkpoint and predicts logits for uint8 images, N x 32 x 32 x 3.

MLflow copies this file and the repo's `models` package into the logged model, so
`mlflow.pyfunc.load_model(uri)` works in any process: importing `models` registers the
custom layers a saved checkpoint names, which `mlflow.keras`'s loader would not.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class KerasClassifier(PythonModel):
    def load_context(self, context):
        import keras

        import models  # noqa: F401  registers the custom layers

        self.model = keras.saving.load_model(
            context.artifacts["checkpoint"], compile=False, safe_mode=True
        )

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        images = np.asarray(model_input, dtype=np.uint8)
        return np.asarray(self.model.predict(images, batch_size=256, verbose=0))


mlflow.models.set_model(KerasClassifier())
