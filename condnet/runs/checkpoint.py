"""Crash-safe run checkpoints: atomic files, the last epoch, the best model, the history."""

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from condnet.runs.files import BEST, CHECKPOINTS, HISTORY, STATE
from condnet.runs.outputs import write_file

# Write text or bytes through a temporary file and a rename: a reader (or a run killed
# mid-write) sees the old file or the new one, never half of one, and no partial file
# stays behind after a full disk or a signal.
write_atomic = write_file


def save_model_atomic(model, path):
    """`model.save` to a temporary `.keras` file, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{path.name}")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_state(run_dir):
    """The state of the last completed epoch of a run, or None.

    The checkpoint it names must be a file name inside `RUN_DIR/checkpoints`
    (no folder, no `..`): a resume loads nothing from elsewhere.
    """
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        checkpoint = state["checkpoint"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} is damaged ({type(error).__name__}: {error}). Start the run again "
            "with --overwrite, or restore the file."
        ) from None
    if not _is_plain_name(checkpoint):
        raise ValueError(
            f"{str(path)!r} names the checkpoint {checkpoint!r}, which is not a file inside "
            f"{str(Path(run_dir) / CHECKPOINTS)!r}; a resume loads only from there. Restore "
            f"the file or start again with --overwrite. Received: checkpoint={checkpoint!r}"
        )
    return state


def _is_plain_name(name):
    return (
        isinstance(name, str)
        and name.endswith(".keras")
        and Path(name).name == name
        and name not in (".", "..")
        and "\\" not in name
        and not Path(name).is_absolute()
    )


def non_finite(model, logs):
    """What is not finite after an epoch (a loss in `logs`, or a weight), or None."""
    for key, value in (logs or {}).items():
        if key.endswith("loss") and not math.isfinite(float(value)):
            return f"{key}={float(value)}"
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", None) or [])
    for variable in variables:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            return f"non-finite values in the weight {variable.path!r}"
    return None


def history_csv(history):
    """Rows of per-epoch logs -> CSV text (one column per key seen)."""
    keys = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _save_and_discard(model, times):
    """Take part in `times` saves of a model distributed over processes, keeping nothing."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="condnet-follower-") as scratch:
        for _ in range(times):
            save_model_atomic(model, Path(scratch) / BEST)


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: the whole run state, written so that a kill never corrupts it.

    Writes, in this order, `checkpoints/epoch-NNNN.keras` (model and optimizer
    state), `model.keras` when the monitored value improved, `history.csv`,
    and last `state.json`, which names the checkpoint and commits the epoch.
    A run killed at any moment resumes from the epoch `state.json` names;
    older checkpoints are deleted only after the commit.

    An epoch whose logs hold a non-finite loss (or whose weights are not
    finite) is never written: training stops, `refused` says which epoch and
    why, and the last good epoch stays the resume point.

    Args:
        run_dir: path. The run directory.
        phase: int. Index of the training phase being run.
        state: dict or None. The state to continue (from `read_state`).
        monitor: str. Logged value that selects the best model, highest
            wins. Defaults to `"val_accuracy"` (falls back to `"accuracy"`
            without validation). Accuracy, unlike the loss, compares across
            phases that weight the loss differently.
        on_commit: callable or None. Called after each committed epoch.
        writes: bool. False in the processes of a multi-process job other than
            the chief: they keep the same history and state (`committed`) in
            memory and write nothing to the run directory. Saving a model
            distributed over processes takes every process (JAX gathers the
            values collectively), so they save the same models, in the same
            order, to a scratch folder of their own that is deleted at once.
    """

    def __init__(
        self, run_dir, phase, state=None, monitor="val_accuracy", on_commit=None, writes=True
    ):
        super().__init__()
        self.writes = writes
        self.committed = None
        self.run_dir = Path(run_dir)
        self.phase = phase
        state = state or {}
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.monitor = monitor
        self.on_commit = on_commit
        self.refused = None
        self.seconds = 0.0  # spent writing checkpoints, state and history

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        problem = non_finite(self.model, logs)
        if problem is not None:
            self.refused = (epoch + 1, problem)
            self.model.stop_training = True
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for part, weight in getattr(self.model, "loss_weights_dict", {}).items():
            logs[f"{part}_loss_weight"] = weight
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:  # the rate this epoch trained at
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        logs["epoch_seconds"] = round(seconds, 3)  # training and validation of the epoch
        self.history.append({"epoch": epoch + 1, "phase": self.phase, **logs})
        name = f"epoch-{epoch + 1:04d}.keras"
        value = logs.get(self.monitor, logs.get("accuracy"))
        improved = value is not None and (self.best is None or value > self.best)
        if improved:
            self.best = value
        started = time.perf_counter()
        self._save(epoch, name, improved)
        self.seconds += time.perf_counter() - started

    def _save(self, epoch, name, improved):
        if not self.writes:
            _save_and_discard(self.model, 2 if improved else 1)
            self._commit(epoch + 1, name, phase_done=False)
            return
        folder = self.run_dir / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        save_model_atomic(self.model, folder / name)
        if improved:
            save_model_atomic(self.model, self.run_dir / BEST)
        write_atomic(self.run_dir / HISTORY, history_csv(self.history))
        self._commit(epoch + 1, name, phase_done=False)
        for old in folder.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        if self.on_commit is not None:
            self.on_commit()

    def end_phase(self):
        """Mark the phase finished (all epochs, or stopped early)."""
        state = read_state(self.run_dir) if self.writes else self.committed
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
        self.committed = state
        if self.writes:
            write_atomic(self.run_dir / STATE, json.dumps(state, indent=1))
