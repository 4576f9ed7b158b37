"""Crash-safe run checkpoints: atomic files, the last epoch, the best model, the history."""

import csv
import io
import json
import os
from pathlib import Path

import keras

STATE = "state.json"
BEST = "model.keras"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"


def write_atomic(path, data):
    """Write text or bytes to `path` through a temporary file and a rename.

    A reader (or a run killed mid-write) sees either the old file or the new
    one, never half of one.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_model_atomic(model, path):
    """`model.save` to a temporary `.keras` file, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{path.name}")
    model.save(temporary)
    os.replace(temporary, path)


def read_state(run_dir):
    """The state of the last completed epoch of a run, or None."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def history_csv(history):
    """Rows of per-epoch logs -> CSV text (one column per key seen)."""
    keys = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: the whole run state, written so that a kill never corrupts it.

    Writes, in this order, `checkpoints/epoch-NNNN.keras` (model and optimizer
    state), `model.keras` when the monitored value improved, `history.csv`,
    and last `state.json`, which names the checkpoint and commits the epoch.
    A run killed at any moment resumes from the epoch `state.json` names;
    older checkpoints are deleted only after the commit.

    Args:
        run_dir: path. The run directory.
        phase: int. Index of the training phase being run.
        state: dict or None. The state to continue (from `read_state`).
        monitor: str. Logged value that selects the best model, highest
            wins. Defaults to `"val_accuracy"` (falls back to `"accuracy"`
            without validation). Accuracy, unlike the loss, compares across
            phases that weight the loss differently.
    """

    def __init__(self, run_dir, phase, state=None, monitor="val_accuracy"):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.phase = phase
        state = state or {}
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for part, weight in getattr(self.model, "loss_weights_dict", {}).items():
            logs[f"{part}_loss_weight"] = weight
        self.history.append({"epoch": epoch + 1, "phase": self.phase, **logs})
        folder = self.run_dir / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.keras"
        save_model_atomic(self.model, folder / name)
        value = logs.get(self.monitor, logs.get("accuracy"))
        if value is not None and (self.best is None or value > self.best):
            self.best = value
            save_model_atomic(self.model, self.run_dir / BEST)
        write_atomic(self.run_dir / HISTORY, history_csv(self.history))
        self._commit(epoch + 1, name, phase_done=False)
        for old in folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()

    def end_phase(self):
        """Mark the phase finished (all epochs, or stopped early)."""
        state = read_state(self.run_dir)
        if state is not None and state["phase"] == self.phase:
            self._commit(state["epoch"], state["checkpoint"], phase_done=True)

    def _commit(self, epoch, checkpoint, phase_done):
        state = {
            "phase": self.phase,
            "epoch": epoch,
            "phase_done": phase_done,
            "checkpoint": checkpoint,
            "best": self.best,
            "history": self.history,
        }
        write_atomic(self.run_dir / STATE, json.dumps(state, indent=1))
