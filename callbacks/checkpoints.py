"""Checkpoints that survive a kill: the best model, and the full state after every epoch.

Every file is written to a temporary name and renamed into place, so a job killed while
writing leaves the previous checkpoint intact, never a half-written one under the real name.
A `.keras` file is verified (every zip member's CRC) before it replaces a good one and again
when a resume picks it; copies, never hard links, so one bad write cannot spoil two names.
"""

import json
import logging
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras

from callbacks.monitor import monitor_mode

log = logging.getLogger(__name__)

# The counters of ReduceLROnPlateau, EarlyStopping and the best checkpoint, saved with every
# epoch so a resumed run keeps its patience and its best value.
STATE_ATTRIBUTES = ("wait", "best", "best_epoch", "cooldown_counter", "stopped_epoch")


def readable_keras(path: Path) -> bool:
    """Whether a `.keras` file is whole: a zip whose members all match their CRCs, holding a
    config and weights. Reads the file once; no model is built."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            return archive.testzip() is None and {"config.json", "model.weights.h5"} <= names
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _atomic(write, path: Path, check=None) -> bool:
    """Writes via a temporary name; renames it into place only if `check(tmp)` passes.
    The temporary file never survives, also when the write raises."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        write(tmp)
        if check is not None and not check(tmp):
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save(save, path: Path, check=None) -> bool:
    return _atomic(lambda tmp: save(str(tmp)), path, check)


def _atomic_write_json(data, path: Path) -> None:
    _atomic(lambda tmp: tmp.write_text(json.dumps(data)), path)


def _atomic_copy(source: Path, path: Path) -> None:
    """`path` becomes a copy of `source`: its own inode, never a hard link."""
    _atomic(lambda tmp: shutil.copyfile(source, tmp), path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) whenever `monitor` improves."""

    def __init__(self, path: str | Path, monitor: str = "val_top1"):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.best = None
        self.best_epoch = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value) or not self._improved(value):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not _atomic_save(self.model.save, self.path, readable_keras):
            log.warning("%s: epoch %d's save did not read back", self.path, epoch + 1)
            return
        self.best, self.best_epoch = float(value), epoch

    def on_train_end(self, logs=None):
        # The file evaluation will load: a damaged one must fail here, naming itself.
        if self.best is not None and not readable_keras(self.path):
            raise RuntimeError(
                f"{self.path} is damaged on disk; run the same command again to resume from "
                "the last good epoch checkpoint"
            )


@dataclass
class TrainingState:
    """What an epoch checkpoint restores besides the weights and optimizer."""

    epochs_done: int
    history: list[dict] = field(default_factory=list)
    callbacks: dict[str, dict] = field(default_factory=dict)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch, saves weights, optimizer state, RNG state and callback counters.

    Keeps the last `keep` epochs, so a checkpoint corrupted on disk falls back to the one
    before. `restore` (called after compile, before fit) loads the newest readable one; this
    callback then puts the counters back into the `track`ed callbacks once they have reset
    themselves. `best`'s file is snapshotted with each epoch (a copy), so a restored epoch
    also gets back the best model it knew, not one from an epoch it lost; an epoch whose
    snapshot does not read back is skipped like one whose weights do not.
    """

    def __init__(self, directory: str | Path, best: BestCheckpoint | None = None, keep: int = 2):
        super().__init__()
        self.directory = Path(directory)
        self.best = best
        self.tracked: dict[str, keras.callbacks.Callback] = {}
        self.keep = keep
        self.state: TrainingState | None = None
        self.pending: dict[str, dict] = {}

    @property
    def history(self) -> list[dict]:
        """The epoch logs so far, restored ones included."""
        return self.state.history if self.state else []

    def track(self, callbacks: list) -> None:
        """The callbacks whose counters this stage saves and restores; they start afresh."""
        self.tracked = {type(cb).__name__: cb for cb in callbacks}
        self.pending = {}

    def on_train_begin(self, logs=None):
        # Restored counters go back once, after the callbacks' own resets at train begin.
        for name, values in self.pending.items():
            for attribute, value in values.items():
                setattr(self.tracked[name], attribute, value)
        self.pending = {}

    def on_epoch_end(self, epoch, logs=None):
        history = [*self.history, {key: float(value) for key, value in (logs or {}).items()}]
        self.state = TrainingState(epoch + 1, history, self._callback_state())
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self.directory / f"epoch-{epoch + 1:04d}"
        _atomic_save(self.model.save_weights, stem.with_suffix(".weights.h5"))
        if self.best is not None and self.best.path.exists():
            _atomic_copy(self.best.path, stem.with_suffix(".best.keras"))
        # The json goes last: a checkpoint counts only once it exists.
        _atomic_write_json(
            {"epochs_done": epoch + 1, "history": history, "callbacks": self.state.callbacks},
            stem.with_suffix(".json"),
        )
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix("").with_suffix(".weights.h5").unlink(missing_ok=True)
            old.with_suffix("").with_suffix(".best.keras").unlink(missing_ok=True)

    def _saved(self) -> dict[str, keras.callbacks.Callback]:
        """The callbacks whose counters a checkpoint holds, by class name."""
        if self.best is None:
            return self.tracked
        return {**self.tracked, type(self.best).__name__: self.best}

    def _callback_state(self) -> dict[str, dict]:
        state = {}
        for name, callback in self._saved().items():
            values = {}
            for attribute in STATE_ATTRIBUTES:
                if not hasattr(callback, attribute):
                    continue
                value = getattr(callback, attribute)
                if isinstance(value, int | float) or value is None:
                    values[attribute] = value
                else:
                    values[attribute] = float(keras.ops.convert_to_numpy(value))
            state[name] = values
        return state

    def latest_epochs_done(self) -> int:
        """Epochs the newest complete checkpoint holds, 0 when there is none."""
        for meta in reversed(self.checkpoints()):
            try:
                return json.loads(meta.read_text())["epochs_done"]
            except (OSError, ValueError, KeyError):
                continue
        return 0

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return sorted(self.directory.glob("epoch-*.json"))

    def restore(self, model: keras.Model) -> int:
        """Restores the newest checkpoint that reads back and returns the epoch to start from.

        Model weights, optimizer state and the best model come back now; the tracked
        callbacks' counters at the next train begin. 0 (and the model as it was) when no
        checkpoint reads back.
        """
        # Half-written files of a job killed mid-save; never read, so just clear them.
        for tmp in [*self.directory.glob(".tmp-*"), *self.directory.parent.glob(".tmp-*")]:
            tmp.unlink(missing_ok=True)
        checkpoints = self.checkpoints()
        if not checkpoints:
            self._restore_best(None, {})
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # A load that fails halfway leaves a mix of weights: keep the fresh ones to go back to.
        fresh = [keras.ops.convert_to_numpy(v) for v in model.variables]
        if model.optimizer is not None:
            fresh_optimizer = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
        for meta in reversed(checkpoints):
            weights = meta.with_suffix("").with_suffix(".weights.h5")
            try:
                state = json.loads(meta.read_text())
                self._check_best_snapshot(meta, state)
                model.load_weights(weights)
            except Exception as error:  # any unreadable file: fall back to the one before
                log.warning("checkpoint %s is unreadable (%s); trying an older one", meta, error)
                continue
            self.state = TrainingState(state["epochs_done"], state["history"], state["callbacks"])
            self.pending = {k: v for k, v in state["callbacks"].items() if k in self.tracked}
            self._restore_best(meta, state["callbacks"])
            if meta != checkpoints[-1]:
                log.warning("resuming from the older checkpoint %s", meta)
            return self.state.epochs_done
        log.warning("no readable checkpoint in %s; starting from scratch", self.directory)
        self._restore_best(None, {})
        for variable, value in zip(model.variables, fresh, strict=True):
            variable.assign(value)
        if model.optimizer is not None:
            for variable, value in zip(model.optimizer.variables, fresh_optimizer, strict=True):
                variable.assign(value)
        return 0

    def _check_best_snapshot(self, meta: Path, state: dict) -> None:
        """An epoch that knew a best model must still have it, readable."""
        if self.best is None:
            return
        if state["callbacks"].get(type(self.best).__name__, {}).get("best") is None:
            return
        snapshot = meta.with_suffix("").with_suffix(".best.keras")
        if not readable_keras(snapshot):
            raise ValueError(f"its best model {snapshot.name} is missing or damaged")

    def _restore_best(self, meta: Path | None, counters: dict[str, dict]) -> None:
        """Puts back the best model and value as of the restored epoch (none before the first)."""
        if self.best is None:
            return
        # BestCheckpoint never resets itself, so its counters go back at once.
        self.best.best, self.best.best_epoch = None, None
        for attribute, value in counters.get(type(self.best).__name__, {}).items():
            setattr(self.best, attribute, value)
        snapshot = meta.with_suffix("").with_suffix(".best.keras") if meta else None
        if snapshot is not None and snapshot.exists():
            _atomic_copy(snapshot, self.best.path)
        else:
            self.best.path.unlink(missing_ok=True)
