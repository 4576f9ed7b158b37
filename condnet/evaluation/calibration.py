"""Temperature scaling: calibrated probabilities from the gate and from the experts."""

import keras
import numpy as np
from keras import ops
from keras.config import epsilon  # Keras's fuzz factor, 1e-7 by default

from condnet.evaluation.metrics import evaluate_predictions
from condnet.models.conditional_model import ConditionalModel
from condnet.models.dispatch import inference_weights

TEMPERATURE_RANGE = (0.05, 20.0)


@keras.saving.register_keras_serializable(package="condnet")
class TemperatureScaling(keras.layers.Layer):
    """Softens (or sharpens) probabilities by a temperature.

    Returns `softmax(log(p) / temperature)` over the last axis: a temperature
    above 1 flattens the distribution, below 1 sharpens it, and 1 leaves it
    as it is. The ranking of the classes never changes, so neither does the
    argmax. The input is a probability vector (the output of a softmax);
    probabilities are clipped at 1e-7 before the log.

    Args:
        temperature: float > 0. Defaults to 1.0.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: tensor of probabilities, summing to 1 over the last axis.

    Example:

    ```python
    layer = TemperatureScaling(2.0)
    layer(np.array([[0.9, 0.1]]))  # [[0.75, 0.25]]
    ```
    """

    def __init__(self, temperature=1.0, **kwargs):
        if not isinstance(temperature, int | float) or not 0 < temperature < float("inf"):
            raise ValueError(
                "temperature must be a finite number > 0 (1 leaves probabilities "
                f"unchanged). Received: temperature={temperature!r}"
            )
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        log_probabilities = ops.log(ops.clip(inputs, epsilon(), 1.0))
        return ops.softmax(log_probabilities / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


# === Fitting ===


def fit_temperatures(model, data):
    """Temperatures of the gate and of the experts that minimise the NLL on `data`.

    First the gate's temperature, on the negative log-likelihood of the
    true groups under the gate's probabilities; then, with the gate so
    calibrated, one temperature shared by all experts, on the NLL of the
    true classes under the model's final class probabilities (which follow
    the model's routing). Each is a golden-section search over log T within
    `TEMPERATURE_RANGE`; the NLL is unimodal there, as it is convex in 1/T.

    Args:
        model: `ConditionalModel`, trained.
        data: held-out data: an `ImageFolder` (or any sequence of
            `(inputs, labels)` batches) or a tuple `(inputs, labels)` of arrays.

    Returns:
        A dict `{"gate": T_gate, "experts": T_experts}` of floats.
    """
    _check_model(model)
    groups, experts, labels, _ = dense_outputs_of(model, data)
    return _fit(model, groups, experts, labels)


def apply_temperatures(model, temperatures, input_shape=None):
    """A new ConditionalModel whose gate and experts end in `TemperatureScaling`.

    The new model holds a copy of every part of `model` (same weights, no
    shared variables); each part is wrapped in a functional model that
    appends `TemperatureScaling`. Hierarchy, trunk, taps and routing are the
    same, a `preprocessor` (a text model's vectorizer) is shared as it is,
    and the model saves and loads with `safe_mode=True`. It is not compiled:
    call `compile()` before `fit` or `evaluate`.

    Args:
        model: `ConditionalModel`.
        temperatures: dict `{"gate": T_gate, "experts": T_experts}`.
        input_shape: shape of the model's input batch, e.g. `(None, 64, 64, 3)`.
            Defaults to `None`: read from the trunk or the gate.
    """
    _check_model(model)
    shape = _input_shape(model, input_shape)
    config = model.get_config()
    if model.preprocessor is not None:  # the adapted layer itself: its config has no vocabulary
        config["preprocessor"] = model.preprocessor
    copy = type(model).from_config(config)
    copy.build(shape)
    copy.set_weights(model.get_weights())
    taps = copy.tap_shapes(shape)
    experts = {
        group: _tempered_part(expert, taps[copy.expert_taps[group]], temperatures["experts"])
        if expert is not None
        else None
        for group, expert in copy.experts.items()
    }
    return ConditionalModel(
        copy.hierarchy,
        gate=_tempered_part(copy.gate, taps[copy.gate_tap], temperatures["gate"]),
        experts=experts,
        trunk=copy.trunk,
        gate_tap=copy.gate_tap,
        expert_taps=copy.expert_taps,
        routing=copy.routing,
        temperature=copy.temperature,
        confidence_threshold=copy.confidence_threshold,
        seed=copy.seed,
        dispatch=copy.dispatch,
        capacity_factor=copy.capacity_factor,
        preprocessor=copy.preprocessor,
        name=copy.name,
    )


def calibrate(model, data):
    """Fit temperatures on held-out `data` and return the calibrated model.

    Args:
        model: `ConditionalModel`, trained.
        data: held-out data (see `fit_temperatures`), e.g. the validation split.

    Returns:
        A tuple `(calibrated_model, report)`. The report holds
        `temperatures`, `num_samples`, and under `before` and `after`: the
        `expected_calibration_error` per level (`group`, `class`), the
        `negative_log_likelihood` per level, `accuracy`, `group_accuracy` and
        `gate_accuracy` (`condnet.evaluation.metrics.GLOSSARY`), all measured
        on `data`.

    Example:

    ```python
    calibrated, report = calibrate(model, validation)
    report["after"]["expected_calibration_error"]  # {"group": ..., "class": ...}
    calibrated.save("model.calibrated.keras")
    ```
    """
    _check_model(model)
    groups, experts, labels, shape = dense_outputs_of(model, data)
    temperatures = _fit(model, groups, experts, labels)
    report = {
        "temperatures": temperatures,
        "num_samples": int(len(labels)),
        "before": _scores(model, groups, experts, labels, {"gate": 1.0, "experts": 1.0}),
        "after": _scores(model, groups, experts, labels, temperatures),
    }
    return apply_temperatures(model, temperatures, shape), report


# === Probabilities ===


def tempered(probabilities, temperature):
    """Numpy twin of `TemperatureScaling`: softmax(log(p) / T) over the last axis."""
    logits = np.log(np.clip(probabilities, epsilon(), 1.0)) / temperature
    logits = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(logits)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _final_probabilities(model, groups, experts, temperatures):
    """(group, class) probabilities of the model at inference, after temperatures."""
    hierarchy = model.hierarchy
    groups = tempered(groups, temperatures["gate"])
    experts = np.concatenate(
        [
            tempered(experts[:, hierarchy.group_slice(g)], temperatures["experts"])
            for g in hierarchy.groups
        ],
        axis=-1,
    )
    weights = inference_weights(model, groups.astype("float32")).astype(groups.dtype)
    return groups, weights[:, hierarchy.class_to_group] * experts


def _fit(model, groups, experts, labels):
    true_groups = model.hierarchy.class_to_group[labels]
    gate = _search(lambda t: _nll(tempered(groups, t), true_groups))

    def class_nll(t):
        temperatures = {"gate": gate, "experts": t}
        return _nll(_final_probabilities(model, groups, experts, temperatures)[1], labels)

    return {"gate": gate, "experts": _search(class_nll)}


def _search(loss, steps=40):
    """Golden-section search of the temperature minimising `loss`, on log T."""
    low, high = np.log(TEMPERATURE_RANGE)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_loss, right_loss = loss(np.exp(left)), loss(np.exp(right))
    for _ in range(steps):
        if left_loss <= right_loss:
            high, right, right_loss = right, left, left_loss
            left = high - ratio * (high - low)
            left_loss = loss(np.exp(left))
        else:
            low, left, left_loss = left, right, right_loss
            right = low + ratio * (high - low)
            right_loss = loss(np.exp(right))
    return float(np.exp((low + high) / 2))


def _nll(probabilities, labels):
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, epsilon(), 1.0))))


def _scores(model, groups, experts, labels, temperatures):
    groups, classes = _final_probabilities(model, groups, experts, temperatures)
    metrics = evaluate_predictions(model.hierarchy, labels, classes, group_probabilities=groups)
    true_groups = model.hierarchy.class_to_group[labels]
    return {
        "expected_calibration_error": metrics["expected_calibration_error"],
        "negative_log_likelihood": {
            "group": _nll(groups, true_groups),
            "class": _nll(classes, labels),
        },
        "accuracy": metrics["accuracy"],
        "group_accuracy": metrics["group_accuracy"],
        "gate_accuracy": metrics["gate_accuracy"],
    }


# === Helpers ===


def dense_outputs_of(model, data):
    """Gate and expert probabilities (every expert on every row), labels, input shape."""
    groups, experts, labels, shape = [], [], [], None
    for inputs, batch_labels in _batches(data):
        gate, every_expert, _ = model.dense_outputs(ops.convert_to_tensor(inputs))
        groups.append(ops.convert_to_numpy(gate).astype("float64"))
        experts.append(ops.convert_to_numpy(every_expert).astype("float64"))
        labels.append(np.asarray(batch_labels).reshape(-1))
        shape = (None, *np.shape(inputs)[1:])
    if not labels or not sum(len(batch) for batch in labels):
        raise ValueError("Calibration needs at least one labelled sample. Received: empty data")
    labels = model.hierarchy.check_labels(np.concatenate(labels))
    return np.concatenate(groups), np.concatenate(experts), labels, shape


def _batches(data, batch_size=256):
    if isinstance(data, tuple | list) and len(data) == 2:
        inputs, labels = data
        for start in range(0, len(labels), batch_size):
            yield inputs[start : start + batch_size], labels[start : start + batch_size]
    elif hasattr(data, "read_batch"):  # an ImageFolder: only the images that decoded
        for index in range(len(data)):
            images, labels, errors = data.read_batch(index)
            keep = np.array([error is None for error in errors], bool)
            if keep.any():
                yield images[keep], labels[keep]
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        for index in range(len(data)):
            yield data[index][:2]
    else:
        raise TypeError(
            "data must be a tuple (inputs, labels) or a sequence of (inputs, labels) "
            f"batches such as an ImageFolder. Received: {type(data).__name__}"
        )


def _tempered_part(part, input_shape, temperature):
    inputs = keras.Input(tuple(input_shape)[1:])
    outputs = TemperatureScaling(temperature, name="temperature_scaling")(part(inputs))
    return keras.Model(inputs, outputs, name=f"{part.name}_calibrated")


def _input_shape(model, input_shape):
    if input_shape is not None:
        return tuple(input_shape)
    source = model.trunk if model.trunk is not None else model.gate
    inputs = getattr(source, "inputs", None)
    if not inputs:
        raise ValueError(
            "The model's input shape is unknown (its gate is not a functional model). "
            "Pass input_shape=, e.g. (None, 64, 64, 3)."
        )
    return tuple(inputs[0].shape)


def _check_model(model):
    if not isinstance(model, ConditionalModel):
        raise TypeError(
            "Temperature scaling applies to a condnet.ConditionalModel. Received: "
            f"{type(model).__name__}"
        )
    nested = [g for g, e in model.experts.items() if isinstance(e, ConditionalModel)]
    if nested:
        raise TypeError(
            "Temperature scaling supports experts that output one probability tensor; "
            f"the experts of {nested} are ConditionalModels. Calibrate each of them "
            "on its own group's rows instead."
        )
