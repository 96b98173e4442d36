"""Per-epoch metrics to the active MLflow run."""

import keras
import mlflow


class MlflowMetrics(keras.callbacks.Callback):
    """Logs every value of the epoch logs with step=epoch, synchronously.

    mlflow.keras.MlflowCallback does the same asynchronously, and also logs un-stepped
    `validation_*` copies at every validation and the optimizer's config at every fit() (which
    clashes with the logged params on resume and at the fine-tune stage). Synchronous logging
    lets a resumed job trust that what its checkpoint recorded also reached the store.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            mlflow.log_metrics({key: float(value) for key, value in logs.items()}, step=epoch)
