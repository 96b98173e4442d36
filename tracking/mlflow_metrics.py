"""Per-epoch metrics to the active MLflow run."""

import keras
import mlflow

from tracking.values import clean_curves


class MlflowMetrics(keras.callbacks.Callback):
    """Logs every value of the epoch logs at step epoch + 1 as `<section>/<name>`
    (`tracking.values.curve_key`), synchronously.

    Steps count epochs from 1, as Keras' console does (`Epoch 1/30`) and as the epoch
    checkpoints are named, so step 3 in the UI is the third epoch everywhere.

    mlflow.keras.MlflowCallback does the same asynchronously, and also logs un-stepped
    `validation_*` copies at every validation and the optimizer's config at every fit() (which
    clashes with the logged params on resume and at the fine-tune stage). Synchronous logging
    lets a resumed job trust that what its checkpoint recorded also reached the store.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            mlflow.log_metrics(clean_curves(logs), step=epoch + 1)
