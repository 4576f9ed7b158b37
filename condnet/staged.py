"""Staged training: the gate first, then each expert on its own group's rows."""

import warnings

import keras
import numpy as np


def fit_staged(
    model,
    x,
    y=None,
    gate_epochs=5,
    expert_epochs=5,
    joint_epochs=0,
    learning_rate=1e-3,
    joint_learning_rate=1e-4,
    validation_data=None,
    **fit_kwargs,
):
    """Train a ConditionalModel in stages and return each stage's History.

    1. **Gate**: the gate (with the trunk, if any) learns the true group of
       every row.
    2. **Experts**: the trunk is frozen, and each expert is fitted on the rows
       of its own group only, against the class within that group. An expert
       that is itself a ConditionalModel is trained the same way, recursively.
    3. **Joint** (optional, `joint_epochs > 0`): the whole model is compiled
       with `joint_learning_rate` and fine-tuned with its hierarchical loss.

    Args:
        model: a `ConditionalModel`.
        x: input array, or a condnet `ImageFolder` (then `y` is None).
        y: class indices (from `Hierarchy.encode`) when `x` is an array.
        gate_epochs, expert_epochs, joint_epochs: ints. Epochs per stage.
        learning_rate: float. Adam learning rate of the gate and expert stages.
        joint_learning_rate: float. Adam learning rate of the joint stage.
        validation_data: `(x_val, y_val)` arrays or an `ImageFolder`.
        **fit_kwargs: passed to every `fit` call (batch_size, callbacks, ...).

    Returns:
        dict: `{"gate": History, "experts": {group: History}, "joint": History}`
        (a stage that did not run is absent).
    """
    data = _Data.of(x, y, model.hierarchy)
    validation = (
        None if validation_data is None else _Data.of(*_pair(validation_data), model.hierarchy)
    )
    histories = {}
    if gate_epochs:
        histories["gate"] = _fit_gate(
            model, data, validation, gate_epochs, learning_rate, fit_kwargs
        )
    if expert_epochs:
        histories["experts"] = _fit_experts(
            model, data, validation, expert_epochs, learning_rate, fit_kwargs
        )
    if joint_epochs:
        model.compile(optimizer=keras.optimizers.Adam(joint_learning_rate))
        histories["joint"] = model.fit(
            x, y, epochs=joint_epochs, validation_data=validation_data, **fit_kwargs
        )
    return histories


# === Stages ===


def _fit_gate(model, data, validation, epochs, learning_rate, fit_kwargs):
    def gate_of(inputs):
        return model.gate(model.tap_features(inputs)[model.gate_tap])

    gate_model = _stage_model(data.input_shape, gate_of, "condnet_gate_stage")
    groups = model.hierarchy.class_to_group
    return _fit(
        gate_model,
        data.relabel(groups),
        _relabel(validation, groups),
        epochs,
        learning_rate,
        fit_kwargs,
    )


def _fit_experts(model, data, validation, epochs, learning_rate, fit_kwargs):
    hierarchy = model.hierarchy
    frozen = model.trunk is not None and model.trunk.trainable
    if frozen:
        model.trunk.trainable = False
    try:
        histories = {}
        for g, group in enumerate(hierarchy.groups):
            if model.experts[group] is None:
                continue
            rows = np.flatnonzero(hierarchy.class_to_group[data.labels] == g)
            if rows.size == 0:
                warnings.warn(
                    f"Group {group!r} has no training rows, so its expert was not "
                    "trained. Add samples of its classes.",
                    stacklevel=3,
                )
                continue
            val_rows = (
                None
                if validation is None
                else np.flatnonzero(hierarchy.class_to_group[validation.labels] == g)
            )
            histories[group] = _fit_expert(
                model,
                group,
                data.subset(rows),
                None if validation is None else validation.subset(val_rows),
                epochs,
                learning_rate,
                fit_kwargs,
            )
        return histories
    finally:
        if frozen:
            model.trunk.trainable = True


def _fit_expert(model, group, data, validation, epochs, learning_rate, fit_kwargs):
    local = model.hierarchy.class_to_local
    expert = model.experts[group]
    if hasattr(expert, "routes_at_inference"):  # a nested ConditionalModel
        return _fit_nested(model, group, data, validation, epochs, learning_rate, fit_kwargs)
    tap = model.expert_taps[group]

    def expert_of(inputs):
        return model.expert_probabilities(group, model.tap_features(inputs)[tap])

    expert_model = _stage_model(data.input_shape, expert_of, f"condnet_{group}_stage")
    return _fit(
        expert_model,
        data.relabel(local),
        _relabel(validation, local),
        epochs,
        learning_rate,
        fit_kwargs,
    )


def _fit_nested(model, group, data, validation, epochs, learning_rate, fit_kwargs):
    offset = model.hierarchy.group_slice(group).start
    features = data.features(model, model.expert_taps[group])
    val_pair = None
    if validation is not None:
        val_pair = (
            validation.features(model, model.expert_taps[group]),
            validation.labels - offset,
        )
    staged = fit_staged(
        model.experts[group],
        features,
        data.labels - offset,
        gate_epochs=epochs,
        expert_epochs=epochs,
        learning_rate=learning_rate,
        validation_data=val_pair,
        **fit_kwargs,
    )
    return staged.get("gate")


def _stage_model(input_shape, head, name):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, head(inputs), name=name)


def _fit(stage_model, data, validation, epochs, learning_rate, fit_kwargs):
    stage_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    kwargs = dict(fit_kwargs)
    if validation is not None:
        kwargs["validation_data"] = validation.fit_input()
    x, y = data.fit_input()
    return stage_model.fit(x, y, epochs=epochs, **kwargs)


def _relabel(data, mapping):
    return None if data is None else data.relabel(mapping)


def _pair(validation_data):
    if isinstance(validation_data, tuple | list):
        return validation_data[0], validation_data[1]
    return validation_data, None


# === Data: arrays or an ImageFolder, seen the same way ===


class _Data:
    """Rows of a training set that can be subset and relabelled."""

    def __init__(self, x, labels, mapping=None):
        self.x, self.labels, self.mapping = x, labels, mapping

    @classmethod
    def of(cls, x, y, hierarchy):
        if y is None:
            if not (hasattr(x, "labels") and hasattr(x, "subset")):
                raise TypeError(
                    "fit_staged needs arrays (x, y) or a condnet ImageFolder, to pick "
                    f"each group's rows. Received: x of type {type(x).__name__}, y=None"
                )
            return cls(x, hierarchy.check_labels(x.labels))
        return cls(np.asarray(x), hierarchy.check_labels(y))

    @property
    def input_shape(self):
        if isinstance(self.x, np.ndarray):
            return self.x.shape[1:]
        return tuple(np.asarray(self.x[0][0]).shape[1:])

    def subset(self, rows):
        x = self.x[rows] if isinstance(self.x, np.ndarray) else self.x.subset(rows)
        return _Data(x, self.labels[rows], self.mapping)

    def relabel(self, mapping):
        return _Data(self.x, self.labels, np.asarray(mapping))

    def fit_input(self):
        labels = self.labels if self.mapping is None else self.mapping[self.labels]
        if isinstance(self.x, np.ndarray):
            return self.x, labels
        return _Relabeled(self.x, self.mapping), None

    def features(self, model, tap):
        x = self.x if isinstance(self.x, np.ndarray) else self.x.numpy()[0]
        if tap is None:
            return x
        return np.asarray(model.trunk.predict(x, verbose=0)[tap])


class _Relabeled(keras.utils.PyDataset):
    """An ImageFolder whose labels are mapped (to groups or local indices)."""

    def __init__(self, dataset, mapping):
        super().__init__()
        self.dataset, self.mapping = dataset, mapping

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        images, labels = self.dataset[index][:2]
        return images, self.mapping[np.asarray(labels)]

    def on_epoch_end(self):
        self.dataset.on_epoch_end()
