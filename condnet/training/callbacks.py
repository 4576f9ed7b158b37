"""Training callbacks: loss-weight and learning-rate schedules, early stopping that says
so, a smoothed validation metric for small validation sets, a clear stop on NaN losses."""

import math
import sys
import warnings

import keras

_PARTS = ("gate", "class", "expert")


class LossWeightSchedule(keras.callbacks.Callback):
    """Change a ConditionalModel's loss weights at the start of epochs.

    Keras 3 fixes `compile(loss_weights=...)` at compile time, so condnet keeps
    its three loss weights (gate, class, expert) in a model variable that this
    callback assigns between epochs; it works on every backend.

    Args:
        schedule: dict or callable. A dict maps a starting epoch (0-based) to
            the weights from that epoch on, e.g.
            `{0: {"gate": 1.0, "class": 0.1}, 5: {"class": 1.0}}`; weights not
            named keep their value. A callable takes the epoch and returns
            such a dict.
        verbose: int. 1 prints each change on standard error. Defaults to 0.
        start_epoch: int. The fit epoch the schedule's epoch 0 falls on, for a
            schedule used in a later training phase (`fit(initial_epoch=...)`).
            Defaults to 0.

    Example:

    ```python
    schedule = LossWeightSchedule.coarse_to_fine(epochs=10)
    model.fit(x, y, epochs=10, callbacks=[schedule])
    ```
    """

    def __init__(self, schedule, verbose=0, start_epoch=0):
        super().__init__()
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(
                f"start_epoch must be an int >= 0. Received: start_epoch={start_epoch!r}"
            )
        self.start_epoch = start_epoch
        if isinstance(schedule, dict):
            _check_steps(schedule)
        elif not callable(schedule):
            raise TypeError(
                "schedule must be a dict {epoch: {part: weight}} or a callable "
                f"epoch -> {{part: weight}}. Received: {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.verbose = verbose

    @classmethod
    def coarse_to_fine(cls, epochs, start_epoch=0):
        """Gate first, then classes: a B-CNN-style schedule over `epochs`.

        The first fifth of the epochs weights the gate, the next fifth
        balances gate and classes, and the rest weights the final classes.
        """
        one_fifth = max(1, epochs // 5)
        return cls(
            {
                0: {"gate": 1.0, "class": 0.1, "expert": 0.5},
                one_fifth: {"gate": 0.5, "class": 0.5, "expert": 0.5},
                2 * one_fifth: {"gate": 0.1, "class": 1.0, "expert": 0.2},
            },
            start_epoch=start_epoch,
        )

    def weights_for(self, epoch):
        """The weights in force at schedule epoch `epoch` (fit epoch - `start_epoch`)."""
        if callable(self.schedule):
            return dict(self.schedule(epoch))
        weights = {}
        for start in sorted(self.schedule):
            if start <= epoch:
                weights.update(self.schedule[start])
        return weights

    def on_epoch_begin(self, epoch, logs=None):
        weights = self.weights_for(max(0, epoch - self.start_epoch))
        _check_parts(weights)
        self.model.set_loss_weights(
            weights.get("gate"), weights.get("class"), weights.get("expert")
        )
        if self.verbose:
            print(
                f"Epoch {epoch + 1}: loss weights {self.model.loss_weights_dict}",
                file=sys.stderr,
                flush=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for part, value in self.model.loss_weights_dict.items():
                logs[f"{part}_loss_weight"] = value


def cosine_learning_rate(base, epochs, start_epoch=0, floor=0.01):
    """A per-epoch cosine decay for `keras.callbacks.LearningRateScheduler`.

    Epoch `start_epoch` trains at `base`; the rate then follows half a cosine
    down to `floor * base` at the epoch after the last of `epochs`, so the last
    epoch trains near the floor (a few percent of `base`). Without it a short
    schedule ends at its full rate and the kept epoch depends on where the
    noise of the last steps left the weights.

    Example:

    ```python
    rate = cosine_learning_rate(1e-3, epochs=10)
    model.fit(x, y, epochs=10, callbacks=[keras.callbacks.LearningRateScheduler(rate)])
    ```
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1. Received: epochs={epochs!r}")

    def rate(epoch, current=None):
        done = min(max(epoch - start_epoch, 0), epochs) / epochs
        return float(base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))))

    return rate


class EarlyStop(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that says, in one line, that it stopped.

    Keras's own callback stops silently unless `verbose=1`, and then prints two
    bare lines; a user whose 30-epoch run ended at epoch 11 should read why,
    which epoch was kept and how to train on. The line goes to standard error;
    `name` prefixes it (e.g. "Flat baseline: "); `announce=False` keeps it
    silent. `message` holds the line once training stopped early, else None.
    Keras also "stops" a fit whose patience runs out on its last epoch; that
    run trained every epoch, so it gets no line (the report still names the
    epoch kept).
    """

    def __init__(self, *, name="", announce=True, **kwargs):
        super().__init__(**kwargs)
        self.name, self.announce, self.message = name, announce, None

    def on_train_end(self, logs=None):
        last = (self.params or {}).get("epochs")
        if self.stopped_epoch > 0 and (last is None or self.stopped_epoch + 1 < last):
            stopped = f"{self.name}stopped" if self.name else "Stopped"
            self.message = (
                f"{stopped} early at epoch {self.stopped_epoch + 1}: {self.monitor} "
                f"did not improve for {self.patience} epochs; keeping epoch "
                f"{self.best_epoch + 1} ({self.monitor} {float(self.best):.4f}). Raise "
                "--patience (or `patience=`) to train longer."
            )
            if self.announce:
                print(self.message, file=sys.stderr, flush=True)
        super().on_train_end(logs)


# A validation split under this many images picks the best epoch (and stops early) on the
# validation accuracy averaged over SMOOTHING_EPOCHS epochs: at 150 images one image is
# 0.7 points, and the accuracy's standard error at 80% is 3.3 points.
SMALL_VALIDATION = 200
SMOOTHING_EPOCHS = 3


def small_validation(validation):
    """Whether `validation` (an ImageFolder or None) is small enough to smooth its metric
    (`SmoothedMetric`): fewer than `SMALL_VALIDATION` images."""
    return validation is not None and validation.num_samples < SMALL_VALIDATION


def checkpoint_monitor(validation):
    """The logged value that picks model.keras: the validation accuracy (smoothed on a
    small split), or the training accuracy without a validation split."""
    if validation is None:
        return "accuracy"
    return "val_accuracy_smoothed" if small_validation(validation) else "val_accuracy"


class SmoothedMetric(keras.callbacks.Callback):
    """Log the mean of a metric over the last `window` epochs as `f"{monitor}_smoothed"`.

    On a small validation split one image more or less right moves the
    accuracy by a point or more from epoch to epoch: early stopping and the
    choice of the best epoch then chase noise. Watching the mean of the last
    `window` epochs instead smooths it (the first epochs average what there
    is). Put it before the callbacks that read the smoothed value: Keras
    hands every callback the same logs.

    Args:
        monitor: str. The logged metric. Defaults to `"val_accuracy"`.
        window: int. Epochs averaged. Defaults to 3.
    """

    def __init__(self, monitor="val_accuracy", window=3):
        super().__init__()
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1. Received: window={window!r}")
        self.monitor, self.window, self.values = monitor, window, []

    @property
    def name(self):
        return f"{self.monitor}_smoothed"

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.monitor not in logs:
            return
        self.values = [*self.values, float(logs[self.monitor])][-self.window :]
        logs[self.name] = sum(self.values) / len(self.values)


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras's `TerminateOnNaN`, which also says what to try and where it stopped.

    Keras stops training after the batch whose loss is NaN or inf (weights
    saved by earlier callbacks, such as checkpoints, are kept). condnet adds a
    `RuntimeWarning` naming the epoch and batch and the usual causes, and
    `stopped_at`: `(epoch, batch)`, 0-based, or None while the loss is finite.
    """

    def __init__(self):
        super().__init__()
        self.stopped_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        was_stopping = getattr(self.model, "stop_training", False)
        super().on_batch_end(batch, logs)  # Keras decides, and stops
        if was_stopping or not getattr(self.model, "stop_training", False):
            return
        loss = float(logs["loss"])
        self.stopped_at = (self._epoch, batch)
        warnings.warn(
            f"Training stopped at epoch {self._epoch + 1}, batch {batch + 1}: the loss "
            f"became {loss}. Usual causes: a learning rate too high (try 10x lower), inputs "
            "with NaN/inf values, or a gate or expert that does not end in a softmax. "
            f"Received: loss={loss}",
            RuntimeWarning,
            stacklevel=2,
        )


def _check_steps(schedule):
    for epoch, weights in schedule.items():
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Schedule keys are starting epochs (ints >= 0). Received: {epoch!r}")
        _check_parts(weights)


def _check_parts(weights):
    unknown = [k for k in weights if k not in _PARTS]
    if unknown:
        raise ValueError(f"Loss weight names must be among {list(_PARTS)}. Received: {unknown}")
