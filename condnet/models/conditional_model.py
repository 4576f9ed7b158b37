"""ConditionalModel: a gate routes each input to the expert of its group."""

import math

import keras
import numpy as np
from keras import ops
from keras.config import epsilon  # Keras's fuzz factor, 1e-7 by default

from condnet.choices import DISPATCHES
from condnet.hierarchy import Hierarchy
from condnet.models import capacity as capacity_lib
from condnet.models import routing as routing_lib
from condnet.models.precision import precision_of

_LOSS_PARTS = ("gate", "class", "expert")
# Outlier exposure of the experts (`compile`'s `outlier_loss_weight`): the weight of
# pulling each expert towards a uniform answer on other groups' images, relative to the
# expert term. 0.5 is the weight Hendrycks et al. (ICLR 2019, "Deep anomaly detection
# with outlier exposure") use for image classifiers; benchmarks/unknown.py measures it.
OUTLIER_LOSS_WEIGHT = 0.5


@keras.saving.register_keras_serializable(package="condnet")
class ConditionalModel(keras.Model):
    """A gate model picks a group; that group's expert picks the class.

    The gate outputs one probability per group of the hierarchy; each expert
    outputs the probabilities of its group's classes. The model's main output,
    `"classes"`, is a distribution over every class of the hierarchy: in soft
    routing P(group) x P(class | group), in hard routing the chosen expert's
    distribution with zeros elsewhere, so predictions always agree with the
    hierarchy.

    Gate and experts see the raw input, or named intermediate layers ("taps")
    of a shared `trunk`: the gate on `gate_tap`, expert `g` on
    `expert_taps[g]`. Both ways build the same class.

    Under `dispatch="dense"` every expert runs on every row inside `call`
    (training, `evaluate`, `predict_on_batch`, `model(x)`); hard modes select
    with a straight-through one-hot. Under `dispatch="capacity"` each expert
    runs in-graph on a fixed-size buffer of its own rows. `predict` with a
    hard routing runs only the chosen expert on the rows routed to it, either
    way (see `condnet.models.dispatch`).

    Args:
        hierarchy: `Hierarchy` or dict. The groups and their classes.
        gate: Keras model or layer. Maps the input (or the gate tap) to
            `num_groups` probabilities (end it with a softmax).
        experts: dict of group name -> Keras model or layer, each mapping the
            input (or its tap) to its group's class probabilities. A list is
            accepted when each model is named after its group; experts are
            always matched to groups by name, never by position. A group with
            a single class may map to `None` (its class has probability 1).
            An expert may itself be a `ConditionalModel` over the group's
            sub-hierarchy.
        trunk: optional functional Keras model shared by the gate and the
            experts. Defaults to `None` (gate and experts see the input).
        gate_tap: str. Name of the trunk layer the gate reads. Defaults to
            the trunk's output layer.
        expert_taps: dict of group name -> trunk layer name. Defaults to
            `gate_tap` for every group.
        routing: str. `"soft"`, `"hard"`, `"gumbel"` or `"teacher"`.
            Defaults to `"soft"`.
        temperature: float. Gumbel-softmax temperature. Defaults to `1.0`.
        confidence_threshold: float or None. At inference with a hard
            routing, rows whose top gate probability is below it mix their two
            most likely experts. Defaults to `None` (never hedge).
        seed: int or None. Seed of the Gumbel noise. Defaults to `None`.
        dispatch: str. How hard routing runs inside `call` (training,
            `evaluate`, exported graphs): `"dense"` computes every expert on
            every row and selects with a one-hot; `"capacity"` gathers each
            expert's rows into a buffer of static size and runs each expert
            once on it (see `condnet.models.capacity`), so a training step costs about
            `capacity_factor` experts per row instead of all of them. Defaults
            to `"dense"`. `predict` routes rows exactly either way.
        capacity_factor: float. Buffer size per expert as a multiple of
            `batch / num_groups` while training (at least 2.0 at inference).
            Rows beyond it go to their next-best expert, or are dropped and
            counted in the `dropped_rate` metric. Defaults to `1.25`.
        outlier_loss_weight: float >= 0. The weight of the loss's outlier-exposure
            term (see `compile`), which `compile` may change. Defaults to
            `OUTLIER_LOSS_WEIGHT` (0.5); 0 leaves it out.
        preprocessor: optional Keras layer that turns raw inputs into what
            the model reads, saved inside the model's `.keras` file: an
            adapted `keras.layers.TextVectorization` for a text model
            (documents -> token ids). `predict` applies it, eagerly and
            outside the compiled step, when given text (a str, or a list or
            array of str); `fit` and `evaluate` read what it gives
            (`condnet.data.text.TextFolder`). Defaults to `None`.
        **kwargs: passed to `keras.Model` (`name`, `dtype`). `dtype` defaults
            to the mixed policy the gate, experts or trunk compute in, if any
            (else the global policy): see "Mixed precision" below.

    Mixed precision: build the gate, experts and trunk under a mixed Keras
    dtype policy (`build_image_model(precision="mixed_bfloat16")`,
    `keras.config.set_dtype_policy`, or `dtype=` on their layers). Weights
    stay float32 and the parts compute in bfloat16 or float16, while the gate
    and expert outputs are cast to float32 before routing: the routing
    weights, every output but `"route"`, and the losses are float32. End each
    head in a float32 softmax (`Dense(n, activation="softmax",
    dtype="float32")`, as `build_image_model` does) so that the probabilities
    are computed in float32 too. Under `"mixed_float16"` `compile` wraps the
    optimizer in a `keras.optimizers.LossScaleOptimizer`.

    Call arguments:
        inputs: the model's input batch.
        training: bool. Training mode (Gumbel noise, straight-through).

    Returns a dict: `"classes"` (batch, num_classes) probabilities,
    `"groups"` (batch, num_groups) gate probabilities, `"route"` (batch,)
    index of the chosen group, `"experts"` (batch, num_classes) each expert's
    conditional probabilities side by side.

    Example:

    ```python
    model = condnet.ConditionalModel(
        {"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]},
        gate=model_01,
        experts={"cat": model_02_1, "dog": model_02_2},
    )
    model.compile()
    model.fit(images, labels, epochs=5)
    model.routing = "hard"
    outputs = model.predict(images)  # only the chosen expert runs per image
    ```
    """

    def __init__(
        self,
        hierarchy,
        gate,
        experts,
        trunk=None,
        gate_tap=None,
        expert_taps=None,
        routing="soft",
        temperature=1.0,
        confidence_threshold=None,
        seed=None,
        dispatch="dense",
        capacity_factor=1.25,
        preprocessor=None,
        outlier_loss_weight=OUTLIER_LOSS_WEIGHT,
        **kwargs,
    ):
        hierarchy = _as_hierarchy(hierarchy)
        routing_lib.check_routing(routing)
        check_temperature(temperature)
        check_confidence_threshold(confidence_threshold)
        check_capacity_factor(capacity_factor)
        check_dispatch(dispatch, routing, confidence_threshold)
        _check_layer("gate", gate)
        experts = _experts_by_group(hierarchy, experts)
        gate_tap, expert_taps = _resolve_taps(hierarchy, trunk, gate_tap, expert_taps)
        if kwargs.get("dtype") is None:  # the parts' mixed policy: compile scales float16 losses
            kwargs["dtype"] = _mixed_policy_of([trunk, gate, *experts.values()])
        super().__init__(**kwargs)
        self.hierarchy = hierarchy
        self.gate = gate
        self.expert_models = [experts[g] for g in hierarchy.groups]
        self.trunk = _tap_model(trunk, [gate_tap, *expert_taps.values()])
        self.gate_tap = gate_tap
        self.expert_taps = expert_taps
        self._routing = routing
        self._temperature = temperature
        self._confidence_threshold = confidence_threshold
        self.seed = seed
        self._dispatch = dispatch
        self._capacity_factor = capacity_factor
        self._routed_runner = None
        self.preprocessor = _check_preprocessor(preprocessor)
        input_shape = _known_input_shape(self.trunk, gate, self.expert_models)
        self._check_sizes(input_shape)

        # === State ===
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_weights_variable = self.add_weight(
            shape=(3,), initializer="ones", trainable=False, name="loss_weights"
        )
        self._class_to_group = np.asarray(hierarchy.class_to_group, "int32")
        self.accuracy_metric = keras.metrics.Mean(name="accuracy")
        # The group of the final class (as `evaluate_predictions` scores it), and the gate's
        # own top group: under the soft mixture a peaked expert can move the final class.
        self.group_accuracy_metric = keras.metrics.Mean(name="group_accuracy")
        self.gate_accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="gate_accuracy")
        self.loss_part_metrics = [keras.metrics.Mean(name=f"{p}_loss") for p in _LOSS_PARTS]
        self.outlier_loss_metric = keras.metrics.Mean(name="outlier_loss")
        self.outlier_loss_weight = check_outlier_loss_weight(outlier_loss_weight)
        # Column c of `experts` weighs 1 / (size of c's group): a mean over each expert's classes.
        sizes = np.bincount(self._class_to_group, minlength=hierarchy.num_groups)
        self._outlier_columns = (1.0 / sizes[self._class_to_group]).astype("float32")
        if dispatch == "capacity":
            self.dropped_metric = keras.metrics.Mean(name="dropped_rate")
        if input_shape is not None:
            self.build(input_shape)

    # === Settings that may change after construction ===
    # Each setter validates, then drops the compiled train/test/predict
    # functions so the next fit, evaluate or predict uses the new value.

    @property
    def routing(self):
        return self._routing

    @routing.setter
    def routing(self, value):
        routing_lib.check_routing(value)
        check_dispatch(self._dispatch, value, self._confidence_threshold)
        self._change("_routing", value)

    @property
    def temperature(self):
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        check_temperature(value)
        self._change("_temperature", value)

    @property
    def confidence_threshold(self):
        return self._confidence_threshold

    @confidence_threshold.setter
    def confidence_threshold(self, value):
        check_confidence_threshold(value)
        check_dispatch(self._dispatch, self._routing, value)
        self._change("_confidence_threshold", value)

    @property
    def capacity_factor(self):
        return self._capacity_factor

    @capacity_factor.setter
    def capacity_factor(self, value):
        check_capacity_factor(value)
        self._change("_capacity_factor", value)

    @property
    def dispatch(self):
        """`"dense"` or `"capacity"`, fixed at construction (it changes the outputs)."""
        return self._dispatch

    def _change(self, name, value):
        """Set an option; the compiled steps are dropped only if it really changed."""
        if getattr(self, name) == value:
            return  # re-setting the same routing must not retrace and recompile
        setattr(self, name, value)
        self.train_function = self.test_function = self.predict_function = None

    # === Parts ===

    @property
    def experts(self):
        """The experts as a dict: group name -> model (or None)."""
        return dict(zip(self.hierarchy.groups, self.expert_models))

    @property
    def routes_at_inference(self):
        """True when inference runs one expert per row (every mode but soft)."""
        return self.routing != "soft"

    def build(self, input_shape):
        taps = self.tap_shapes(input_shape)
        if not self.gate.built:
            self.gate.build(taps[self.gate_tap])
        for group, expert in self.experts.items():
            if expert is not None and not expert.built:
                expert.build(taps[self.expert_taps[group]])
        self._check_sizes(input_shape)
        self.built = True

    def tap_features(self, inputs, training=False):
        """The tensors the gate and experts read: {tap name: tensor}.

        `inputs` may already be those tensors, a dict keyed by the trunk's tap
        names: the trunk does not run then (training on features computed once
        by a frozen trunk, `condnet.training.features`).
        """
        if isinstance(inputs, dict) and self.trunk is not None:
            return inputs
        if self.trunk is None:
            return {None: inputs}
        return self.trunk(inputs, training=training)

    def expert_probabilities(self, group, features, training=False):
        """One expert's conditional class probabilities for a batch of its tap."""
        expert = self.experts[group]
        if expert is None:
            return ops.ones((ops.shape(features)[0], 1), dtype="float32")
        outputs = expert(features, training=training)
        if isinstance(outputs, dict):
            outputs = outputs["classes"]
        return ops.cast(outputs, "float32")

    def dense_outputs(self, inputs, training=False):
        """Gate probabilities and every expert's conditional probabilities on every row.

        Returns `(groups, experts, taps)`: `(batch, num_groups)`, `(batch,
        num_classes)` (each expert's columns side by side) and the tap features.
        Calibration uses it to see every expert whatever the dispatch.
        """
        taps = self.tap_features(inputs, training=training)
        groups = ops.cast(self.gate(taps[self.gate_tap], training=training), "float32")
        experts = ops.concatenate(
            [
                self.expert_probabilities(g, taps[self.expert_taps[g]], training)
                for g in self.hierarchy.groups
            ],
            axis=-1,
        )
        return groups, experts, taps

    def call(self, inputs, training=False):
        if self.dispatch == "capacity" and self.routing != "soft":
            taps = self.tap_features(inputs, training=training)
            groups = ops.cast(self.gate(taps[self.gate_tap], training=training), "float32")
            return self._capacity_call(taps, groups, self._weights(groups, training), training)
        groups, experts, _ = self.dense_outputs(inputs, training=training)
        weights = self._weights(groups, training)
        classes = routing_lib.expand_to_classes(weights, self._class_to_group) * experts
        route = ops.cast(ops.argmax(weights, axis=-1), "int32")
        return {"classes": classes, "groups": groups, "route": route, "experts": experts}

    def _weights(self, groups, training):
        return routing_lib.route_weights(
            groups,
            self.routing,
            training=training,
            temperature=self.temperature,
            seed=self.seed_generator,
            confidence_threshold=self.confidence_threshold,
        )

    def _capacity_call(self, taps, groups, weights, training):
        """Hard routing with static-capacity buffers: each expert runs on its rows only."""
        batch_size = ops.shape(groups)[0]
        num_groups = self.hierarchy.num_groups
        factor = self.capacity_factor if training else max(self.capacity_factor, 2.0)
        capacity = capacity_lib.capacity_of(batch_size, num_groups, factor)
        first = ops.argmax(weights, axis=-1)
        expert, slot, kept = capacity_lib.assign_slots(first, groups, capacity)
        row_of_slot = capacity_lib.gather_rows(slot, num_groups * capacity, batch_size)
        buffers = {
            tap: capacity_lib.to_buffers(taps[tap], row_of_slot)
            for tap in dict.fromkeys(self.expert_taps.values())
        }
        outputs = []
        for g, group in enumerate(self.hierarchy.groups):
            rows = buffers[self.expert_taps[group]][g * capacity : (g + 1) * capacity]
            columns = self.hierarchy.group_slice(group)
            probabilities = self.expert_probabilities(group, rows, training)
            padding = [[0, 0], [columns.start, self.hierarchy.num_classes - columns.stop]]
            outputs.append(ops.pad(probabilities, padding))
        experts = capacity_lib.from_buffers(ops.concatenate(outputs, axis=0), slot)
        used = ops.one_hot(expert, num_groups, dtype=groups.dtype)
        if training:
            used = routing_lib.straight_through(used, groups)
        classes = routing_lib.expand_to_classes(used, self._class_to_group) * experts
        dropped = 1.0 - ops.cast(kept, "float32")
        return {
            "classes": classes,
            "groups": groups,
            "route": expert,
            "experts": experts,
            "dropped": dropped,
        }

    # === Training ===

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        loss_weights=None,
        metrics="auto",
        *,
        gate_loss_weight=1.0,
        class_loss_weight=1.0,
        expert_loss_weight=1.0,
        outlier_loss_weight=None,
        **kwargs,
    ):
        """Configure training; the hierarchical loss is built in.

        The arguments Keras has come in `keras.Model.compile`'s order
        (`compile("adam")` works as it does on any Keras model); condnet's
        own are keyword-only, and so are Keras's later ones, passed through
        `**kwargs`.

        The loss is `gate_loss_weight * CE(true group, gate)` +
        `class_loss_weight * CE(true class, classes)` +
        `expert_loss_weight * CE(true class, expert of the true group)` +
        `expert_loss_weight * outlier_loss_weight * CE(uniform, every other
        expert)`. The expert term of a sample reaches only its own group's
        expert, so a dog image never teaches the cat expert a cat. The last
        term is outlier exposure: on a dog image, the cat expert learns to
        spread its answer evenly over the cat classes, so an expert that an
        image of no class it knows reaches answers with a low maximum softmax
        and energy, which the unknown-class detector flags
        (`condnet.evaluation.unknown`). It follows the expert weight (a phase
        that trains only the gate trains no expert), and it needs every
        expert on every row: under `dispatch="capacity"`, or with one group,
        it is left out. The three weights live in a variable, so
        `LossWeightSchedule` can change them between epochs.

        Args:
            optimizer: optimizer, its name, or `"auto"` (Adam, learning rate
                1e-3). Under the `"mixed_float16"` policy Keras wraps it in a
                `LossScaleOptimizer` (unless `auto_scale_loss=False`).
            loss: `"auto"` (or `None`): the hierarchical loss above, the only
                one this model trains with. Anything else is refused.
            loss_weights: `None`. Weigh the loss's parts with the
                `*_loss_weight` arguments instead.
            metrics: Keras metrics on the `"classes"` output, added to the
                ones the model always tracks (`accuracy`, `group_accuracy`,
                `gate_accuracy` and each loss part). `"auto"` (the default) or `None` adds
                none.
            gate_loss_weight, class_loss_weight, expert_loss_weight: floats
                >= 0, the weights of the loss's parts. Default to `1.0`.
            outlier_loss_weight: float >= 0, the outlier-exposure term's weight
                relative to the expert term; 0 leaves it out. Defaults to `None`:
                the model's own (its constructor's argument, 0.5 by default).
            **kwargs: the other arguments of `keras.Model.compile`, by
                keyword (`weighted_metrics`, `run_eagerly`, `jit_compile`, ...).
        """
        _check_loss(loss, loss_weights)
        weights = (gate_loss_weight, class_loss_weight, expert_loss_weight)
        self.set_loss_weights(*weights)
        if outlier_loss_weight is not None:
            self.outlier_loss_weight = check_outlier_loss_weight(outlier_loss_weight)
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate=1e-3)
        metrics = None if metrics == "auto" else metrics
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        self._compiled_loss_weights = (*weights, self.outlier_loss_weight)

    def get_compile_config(self):
        """Keras's compile config, with the loss weights `compile` was given."""
        config = super().get_compile_config()
        if config:
            names = (
                "gate_loss_weight",
                "class_loss_weight",
                "expert_loss_weight",
                "outlier_loss_weight",
            )
            config.update(zip(names, self._compiled_loss_weights))
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def set_loss_weights(self, gate=None, class_=None, expert=None):
        """Change the loss weights; `None` keeps a weight as it is."""
        current = ops.convert_to_numpy(self.loss_weights_variable).copy()
        for i, value in enumerate((gate, class_, expert)):
            if value is not None:
                if not np.isfinite(value) or value < 0:
                    raise ValueError(
                        f"Loss weights must be finite and >= 0. Received: "
                        f"{_LOSS_PARTS[i]} weight={value!r}"
                    )
                current[i] = value
        self.loss_weights_variable.assign(current)

    @property
    def loss_weights_dict(self):
        values = ops.convert_to_numpy(self.loss_weights_variable)
        return {part: float(v) for part, v in zip(_LOSS_PARTS, values)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = _flat_labels(y)
        true_groups = ops.take(self._class_to_group, labels)
        classes = y_pred["classes"]
        if training and self.routing == "teacher":
            forced = ops.one_hot(true_groups, self.hierarchy.num_groups)
            classes = routing_lib.expand_to_classes(forced, self._class_to_group)
            classes = classes * y_pred["experts"]
        routed_right = ops.cast(ops.equal(y_pred["route"], true_groups), "float32")
        served, class_mask, expert_mask = None, None, None
        if "dropped" in y_pred:  # capacity dispatch: only the expert that ran has outputs
            served = 1.0 - y_pred["dropped"]
            expert_mask = served * routed_right
            class_mask = served
            self.dropped_metric.update_state(y_pred["dropped"])
        if training and self.routing in ("hard", "gumbel"):
            # A row routed away from its true group has probability exactly 0 for
            # its class (only the chosen expert is in the output), so its class
            # loss would be -log(1e-7) with a huge gradient. The gate loss trains
            # the route; the class term learns only from rows routed right.
            class_mask = _combine(class_mask, routed_right)
        parts = [
            _mean_nll(y_pred["groups"], true_groups, sample_weight),
            _mean_nll(classes, labels, _combine(sample_weight, class_mask)),
            _mean_nll(y_pred["experts"], labels, _combine(sample_weight, expert_mask)),
        ]
        for metric, value in zip(self.loss_part_metrics, parts):
            metric.update_state(value)
        total = ops.sum(ops.stack(parts) * self.loss_weights_variable)
        if self._exposes_outliers(y_pred):
            outlier = _outlier_nll(
                y_pred["experts"], true_groups, self.hierarchy, self._outlier_columns, sample_weight
            )
            self.outlier_loss_metric.update_state(outlier)
            total = total + self.loss_weights_variable[2] * self.outlier_loss_weight * outlier
        for extra in self.losses:
            total = total + ops.cast(extra, total.dtype)
        return _scale_for_replicas(total)

    def _exposes_outliers(self, y_pred):
        """Whether the loss has its outlier-exposure term: a weight, other groups, and
        every expert's output on every row (not the capacity dispatch's)."""
        dense = "dropped" not in y_pred
        return bool(self.outlier_loss_weight) and self.hierarchy.num_groups > 1 and dense

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = _flat_labels(y)
        predicted = ops.cast(ops.argmax(y_pred["classes"], axis=-1), "int32")
        true_groups = ops.take(self._class_to_group, labels)
        correct = ops.cast(ops.equal(predicted, labels), "float32")
        right_group = ops.cast(
            ops.equal(ops.take(self._class_to_group, predicted), true_groups), "float32"
        )
        if "dropped" in y_pred:  # a dropped row has no prediction: it is wrong, not class 0
            correct = correct * (1.0 - y_pred["dropped"])
            right_group = right_group * (1.0 - y_pred["dropped"])
        self.accuracy_metric.update_state(correct, sample_weight=_flat_weight(sample_weight))
        self.group_accuracy_metric.update_state(
            right_group, sample_weight=_flat_weight(sample_weight)
        )
        self.gate_accuracy_metric.update_state(true_groups, y_pred["groups"], sample_weight)
        # Keras's own: the compiled metrics, on the "classes" output.
        return super().compute_metrics(x, labels, y_pred["classes"], sample_weight)

    def fit(self, x=None, y=None, **kwargs):
        """`keras.Model.fit`, after checking the labels against the hierarchy.

        An `ImageFolder` (anything with `hierarchy` and `labels`) must carry
        this model's hierarchy: its labels index that hierarchy's classes.
        """
        if y is not None and not hasattr(y, "element_spec"):
            self.hierarchy.check_labels(ops.convert_to_numpy(y))
        elif hasattr(x, "labels") and hasattr(x, "hierarchy"):
            self._check_data_hierarchy(x.hierarchy)
            self.hierarchy.check_labels(x.labels)
        return super().fit(x, y, **kwargs)

    def _check_data_hierarchy(self, hierarchy):
        if hierarchy != self.hierarchy:
            raise ValueError(
                "The data's hierarchy differs from the model's, so its labels would "
                f"name other classes. Model: {self.hierarchy.to_dict()}. Received: data "
                f"with hierarchy {hierarchy.to_dict()}"
            )

    # === Inference ===

    @property
    def routed_runner(self):
        """The compiled pieces routed `predict` reuses (`condnet.models.dispatch.Runner`).

        Built on first use and kept for the model's life: the trunk + gate
        ("front") and each expert are compiled once per input shape.
        """
        if self._routed_runner is None:
            from condnet.models.dispatch import Runner

            self._routed_runner = Runner(self)  # a plain object: Keras does not track it
        return self._routed_runner

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, routed=None, **kwargs
    ):
        """Predict; with a hard routing only the chosen experts run.

        Args:
            x, batch_size, verbose, steps, callbacks: as in `keras.Model.predict`.
            routed: bool or None. `True` runs only the chosen expert(s) of each
                row (`condnet.models.dispatch.routed_predict`), `False` every
                expert through `keras.Model.predict`. Defaults to `None`:
                routed whenever the routing is not `"soft"`.

        Returns a dict of numpy arrays (see the class docstring). Under routed
        predict, `"experts"` holds zeros for the experts that did not run on a row.
        A row whose input (an array) holds NaN or an infinity has no prediction:
        its `route` is -1 and its probabilities are NaN (`flag_non_finite`).
        """
        if kwargs:
            raise TypeError(
                "ConditionalModel.predict takes x, batch_size, verbose, steps, callbacks "
                f"and routed. Received unknown arguments: {sorted(kwargs)}"
            )
        if self.preprocessor is not None and is_raw_text(x):
            x = self.preprocess(x)
        if routed is None:
            routed = self.routes_at_inference
        if not routed:
            outputs = super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
            return flag_non_finite(x, outputs)
        from condnet.models.dispatch import routed_predict

        outputs = routed_predict(
            self, x, batch_size=batch_size or 32, verbose=verbose, steps=steps, callbacks=callbacks
        )
        return flag_non_finite(x, outputs)

    def preprocess(self, inputs, chunk=1024):
        """`inputs` (e.g. documents, a list of str) through the `preprocessor`, as a numpy
        array of what the model reads (token ids), in chunks, eagerly."""
        if self.preprocessor is None:
            raise ValueError(
                "This ConditionalModel has no preprocessor: it reads its inputs as they are."
            )
        inputs = np.asarray(inputs, dtype=object).reshape(-1)
        parts = [
            ops.convert_to_numpy(self.preprocessor(inputs[start : start + chunk]))
            for start in range(0, len(inputs), chunk)
        ]
        return np.concatenate(parts)

    # === Config ===

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        config = super().get_config()  # name, trainable, dtype policy
        return {
            **config,
            "hierarchy": self.hierarchy.get_config(),
            "gate": serialize(self.gate),
            "experts": {g: serialize(e) for g, e in self.experts.items()},
            "trunk": serialize(self.trunk) if self.trunk is not None else None,
            "gate_tap": self.gate_tap,
            "expert_taps": dict(self.expert_taps),
            "routing": self.routing,
            "temperature": self.temperature,
            "confidence_threshold": self.confidence_threshold,
            "seed": self.seed,
            "dispatch": self.dispatch,
            "capacity_factor": self.capacity_factor,
            "outlier_loss_weight": self.outlier_loss_weight,
            **(
                {"preprocessor": serialize(self.preprocessor)}
                if self.preprocessor is not None
                else {}
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["hierarchy"] = Hierarchy.from_config(config["hierarchy"])
        config["gate"] = deserialize(config["gate"])
        config["experts"] = {
            g: deserialize(e) if e is not None else None for g, e in config["experts"].items()
        }
        if config.get("trunk") is not None:
            config["trunk"] = deserialize(config["trunk"])
        if isinstance(config.get("preprocessor"), dict):  # a layer object is kept as it is
            config["preprocessor"] = deserialize(config["preprocessor"])
        model = cls(**config)
        _pass_on_frozen(model)
        return model

    # === Shape checks ===

    def tap_shapes(self, input_shape):
        """The shape of each tap for a batch of `input_shape`: {tap name: shape}.

        Without a trunk, the one tap `None` is the input itself.
        """
        shape = tuple(input_shape)
        if self.trunk is None:
            return {None: shape}
        specs = self.trunk.compute_output_spec(keras.KerasTensor(shape))
        return {tap: tuple(spec.shape) for tap, spec in specs.items()}

    def _check_sizes(self, input_shape):
        if input_shape is None:
            return
        taps = self.tap_shapes(input_shape)
        gate_size = _output_size(self.gate, taps[self.gate_tap])
        if gate_size is not None and gate_size != self.hierarchy.num_groups:
            raise ValueError(
                f"The gate must output one probability per group. The hierarchy has "
                f"{self.hierarchy.num_groups} groups ({self.hierarchy.groups}) but the "
                f"gate outputs {gate_size}. Received: gate={self.gate.name}"
            )
        for group, expert in self.experts.items():
            if expert is None:
                continue
            size = _output_size(expert, taps[self.expert_taps[group]])
            expected = len(self.hierarchy.classes_of(group))
            if size is not None and size != expected:
                raise ValueError(
                    f"The expert of group {group!r} must output one probability per "
                    f"class of that group: {expected} ({self.hierarchy.classes_of(group)}), "
                    f"but it outputs {size}. Received: expert={expert.name}"
                )


# === Helpers ===


def _flat_labels(y):
    return ops.reshape(ops.cast(y, "int32"), (-1,))


def _flat_weight(sample_weight):
    return None if sample_weight is None else ops.reshape(sample_weight, (-1,))


def _combine(sample_weight, mask):
    if mask is None:
        return sample_weight
    if sample_weight is None:
        return mask
    return ops.reshape(ops.cast(sample_weight, "float32"), (-1,)) * mask


def _scale_for_replicas(loss):
    """Divide by the replicas of a TensorFlow strategy, which sums their gradients (and
    whose train step multiplies the logged loss back), as Keras's own losses do.

    The model's one hook for distribution (`condnet.training.distribute` holds the rest):
    `compute_loss` replaces Keras's, so it scales its loss as Keras's would.
    """
    replicas = replicas_in_sync()
    return loss if replicas == 1 else loss * (1.0 / replicas)


def _mean_nll(probabilities, labels, sample_weight):
    picked = ops.take_along_axis(probabilities, ops.expand_dims(labels, -1), axis=-1)
    nll = -ops.log(ops.squeeze(picked, -1) + epsilon())  # NaN stays NaN: StopOnNaN sees it
    return _weighted_mean(nll, sample_weight)


def _weighted_mean(values, sample_weight):
    if sample_weight is None:
        return ops.mean(values)
    weight = ops.reshape(ops.cast(sample_weight, values.dtype), (-1,))
    return ops.sum(values * weight) / ops.maximum(ops.sum(weight), epsilon())


def _as_hierarchy(hierarchy):
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, dict):
        return Hierarchy(hierarchy)
    raise TypeError(
        "hierarchy must be a condnet.Hierarchy or a dict mapping group -> classes. "
        f"Received: hierarchy of type {type(hierarchy).__name__}"
    )


def _outlier_nll(experts, true_groups, hierarchy, columns, sample_weight):
    """The outlier-exposure term: per row, the cross-entropy from a uniform answer to each
    expert of another group than the row's (`-mean over its classes of log p`), averaged
    over those experts; then the (weighted) mean over rows. `columns` weighs each class
    column by 1 / the size of its group."""
    num_groups = hierarchy.num_groups
    own = ops.take(ops.one_hot(true_groups, num_groups), hierarchy.class_to_group, axis=1)
    nll = -ops.log(experts + epsilon()) * ops.convert_to_tensor(columns)
    per_row = ops.sum((1.0 - own) * nll, axis=-1) / (num_groups - 1)
    return _weighted_mean(per_row, sample_weight)


def check_outlier_loss_weight(value):
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(
            "outlier_loss_weight must be a finite number >= 0 (0 leaves outlier exposure "
            f"out). Received: outlier_loss_weight={value!r:.80}"
        )
    return float(value)


def _check_loss(loss, loss_weights):
    if not (loss is None or (isinstance(loss, str) and loss == "auto")):
        raise ValueError(
            "ConditionalModel trains with its own hierarchical loss (gate + class + "
            "expert cross-entropy), so `loss` must be 'auto' (or left out). Weigh its parts "
            "with gate_loss_weight=, class_loss_weight=, expert_loss_weight=. Received: "
            f"loss={loss!r:.200}"
        )
    if loss_weights is not None:
        raise ValueError(
            "ConditionalModel weighs the parts of its loss with gate_loss_weight=, "
            "class_loss_weight= and expert_loss_weight=, so `loss_weights` must be None. "
            f"Received: loss_weights={loss_weights!r:.200}"
        )


# === Checks of the routing settings (also run by the training recipe's options) ===


def check_temperature(temperature):
    """The Gumbel-softmax temperature: a finite number > 0."""
    if not _finite_positive(temperature):
        raise ValueError(
            f"temperature must be a finite number > 0. Received: temperature={temperature!r}"
        )
    return temperature


def check_confidence_threshold(confidence_threshold):
    """The top gate probability below which a hard-routed row hedges: in (0, 1], or None."""
    value = confidence_threshold
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is not None and not (number and 0 < value <= 1):
        raise ValueError(
            "confidence_threshold must be in (0, 1] (or None to never hedge). "
            f"Received: confidence_threshold={confidence_threshold!r}"
        )
    return confidence_threshold


def check_capacity_factor(capacity_factor):
    """The size of each expert's buffer under capacity dispatch, as a multiple of its fair
    share: a finite number > 0."""
    if not _finite_positive(capacity_factor):
        raise ValueError(
            "capacity_factor must be a finite number > 0. "
            f"Received: capacity_factor={capacity_factor!r}"
        )
    return capacity_factor


def check_dispatch(dispatch, routing=None, confidence_threshold=None):
    """`dispatch` one of `DISPATCHES`, and capacity dispatch with neither teacher forcing
    nor hedging (it sees neither the true group nor a second expert per row)."""
    if dispatch not in DISPATCHES:
        raise ValueError(
            "dispatch must be 'dense' (every expert computes every row while training; "
            "hard modes select with a one-hot) or 'capacity' (each expert runs on a "
            f"fixed-size buffer of its own rows). Received: dispatch={dispatch!r}"
        )
    if dispatch == "capacity" and routing == "teacher":
        raise ValueError(
            "Teacher forcing needs the true group inside the model, which capacity dispatch "
            "does not see. Use routing='hard' (or 'gumbel') with dispatch='capacity', or "
            "dispatch='dense'. Received: routing='teacher', dispatch='capacity'"
        )
    if dispatch == "capacity" and confidence_threshold is not None:
        raise ValueError(
            "Hedging (confidence_threshold) runs two experts per row; capacity dispatch runs "
            "one. Use dispatch='dense' (predict() hedges either way). Received: "
            f"confidence_threshold={confidence_threshold!r}, dispatch='capacity'"
        )
    return dispatch


def _finite_positive(value):
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def _pass_on_frozen(model):
    """Freeze again, all the way down, each layer restored frozen.

    Keras restores `trainable=False` when it makes a layer, before build()
    makes the layer's own sublayers (a keras-hub Transformer block's attention
    and dense layers), which then restore trainable: a loaded model would train
    the weights of a backbone saved frozen. True first: on TensorFlow, Keras
    skips an assignment of the value an attribute already holds.
    """
    for layer in model._flatten_layers(include_self=False):
        if not layer.trainable:
            layer.trainable = True
            layer.trainable = False


def _check_preprocessor(preprocessor):
    if preprocessor is not None and not isinstance(preprocessor, keras.layers.Layer):
        raise TypeError(
            "`preprocessor` must be a Keras layer (e.g. an adapted TextVectorization) or "
            f"None. Received: {type(preprocessor).__name__} {preprocessor!r:.100}"
        )
    return preprocessor


def is_raw_text(x):
    """Whether `x` is text for a preprocessor: a str, or a list or array of them."""
    if isinstance(x, str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "OUS" and (x.size == 0 or isinstance(x.flat[0], str | bytes))
    return isinstance(x, list | tuple) and bool(x) and all(isinstance(v, str) for v in x)


def _check_layer(role, layer):
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            f"The {role} must be a Keras model or layer. Received: {role} of type "
            f"{type(layer).__name__}"
        )


def _experts_by_group(hierarchy, experts):
    if isinstance(experts, list | tuple):
        names = [getattr(e, "name", None) for e in experts]
        if sorted(map(str, names)) != sorted(hierarchy.groups):
            raise TypeError(
                "Pass experts as a dict {group: model}: experts are matched to groups "
                f"by name, never by position. A list works only when each model is "
                f"named after its group. The groups are {hierarchy.groups}. Received: "
                f"a list of models named {names}"
            )
        experts = dict(zip(names, experts))
    if not isinstance(experts, dict):
        raise TypeError(
            f"experts must be a dict {{group: model}}. Received: {type(experts).__name__}"
        )
    missing = [g for g in hierarchy.groups if g not in experts]
    extra = [g for g in experts if g not in hierarchy.groups]
    if missing or extra:
        raise ValueError(
            f"experts must have exactly one entry per group {hierarchy.groups}. "
            f"Missing: {missing}; not in the hierarchy: {extra}. Received: "
            f"experts for {list(experts)}"
        )
    for group, expert in experts.items():
        _check_expert(hierarchy, group, expert)
    return experts


def _check_expert(hierarchy, group, expert):
    if expert is None:
        if len(hierarchy.classes_of(group)) != 1:
            raise ValueError(
                f"Only a group with a single class may have no expert. Group {group!r} "
                f"has classes {hierarchy.classes_of(group)}. Received: experts[{group!r}]=None"
            )
        return
    _check_layer(f"expert of group {group!r}", expert)
    if isinstance(expert, ConditionalModel):
        sub = hierarchy.subhierarchy(group)
        if sub != expert.hierarchy:
            raise ValueError(
                f"The expert of group {group!r} is a ConditionalModel, so its hierarchy "
                f"must be that group's subtree {sub!r}. Received: {expert.hierarchy!r}"
            )


def _resolve_taps(hierarchy, trunk, gate_tap, expert_taps):
    if trunk is None:
        if gate_tap is not None or any(t is not None for t in (expert_taps or {}).values()):
            raise ValueError(
                "gate_tap and expert_taps name layers of a trunk, but no trunk was "
                f"given. Pass trunk=. Received: gate_tap={gate_tap!r}, "
                f"expert_taps={expert_taps!r}"
            )
        return None, {g: None for g in hierarchy.groups}
    _check_layer("trunk", trunk)
    if not getattr(trunk, "inputs", None):
        raise TypeError(
            "The trunk must be a functional Keras model (built from keras.Input) so "
            f"its intermediate layers can be tapped. Received: trunk={trunk.name}"
        )
    if gate_tap is None:
        gate_tap = _default_tap(trunk)
    expert_taps = dict(expert_taps or {})
    unknown = [g for g in expert_taps if g not in hierarchy.groups]
    if unknown:
        raise ValueError(
            f"expert_taps names groups that are not in the hierarchy {hierarchy.groups}. "
            f"Received: {unknown}"
        )
    return gate_tap, {g: expert_taps.get(g, gate_tap) for g in hierarchy.groups}


def _default_tap(trunk):
    if isinstance(trunk.output, dict):
        return list(trunk.output)[-1]
    return trunk.output._keras_history.operation.name


def _tap_model(trunk, taps):
    """The trunk as a model whose outputs are the tapped layers, by name."""
    if trunk is None:
        return None
    if isinstance(trunk.output, dict) and set(taps) <= set(trunk.output):
        return trunk
    names = [layer.name for layer in trunk.layers]
    outputs = {}
    for tap in dict.fromkeys(taps):
        if tap not in names:
            raise ValueError(
                f"The trunk {trunk.name!r} has no layer named {tap!r} to tap. Its layers "
                f"are {names}. Received: tap={tap!r}"
            )
        outputs[tap] = trunk.get_layer(tap).output
    return keras.Model(trunk.inputs, outputs, name=trunk.name)


def _mixed_policy_of(parts):
    """The mixed policy some part computes in (float16 first), or None."""
    found = {precision_of(part) for part in parts if part is not None}
    return next((name for name in ("mixed_float16", "mixed_bfloat16") if name in found), None)


def _known_input_shape(trunk, gate, experts):
    source = trunk if trunk is not None else gate
    inputs = getattr(source, "inputs", None)
    if trunk is None and not all(getattr(e, "inputs", True) for e in experts):
        return None
    if inputs and len(inputs) == 1:
        return tuple(inputs[0].shape)
    return None


def _output_size(model, input_shape):
    if not model.built:
        return None
    spec = model.compute_output_spec(keras.KerasTensor(input_shape))
    if isinstance(spec, dict):
        spec = spec["classes"]
    return spec.shape[-1]


def replicas_in_sync():
    """How many replicas a TensorFlow strategy in force sums gradients over (else 1)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def flag_non_finite(inputs, outputs):
    """`predict`'s outputs with each row whose input holds NaN or an infinity flagged:
    `route` -1, NaN probabilities.

    What a network makes of such pixels depends on where it runs (TensorFlow's fused
    convolutions turn NaN into 0, ONNX Runtime propagates it), so condnet answers by a
    rule on the input instead, the one its exported graphs follow too
    (`condnet.deploy.export`). Inputs that are not arrays (datasets) are left as they are.
    """
    if not hasattr(inputs, "shape") or isinstance(inputs, keras.utils.PyDataset):
        return outputs
    values = np.asarray(keras.ops.convert_to_numpy(inputs))
    if values.dtype.kind not in "fc" or not len(values):
        return outputs
    rows = len(next(iter(outputs.values())))  # `steps` may have predicted fewer rows
    bad = ~np.isfinite(values[:rows].reshape(min(rows, len(values)), -1)).all(axis=1)
    if not bad.any():
        return outputs
    return {
        key: np.where(
            bad.reshape(-1, *[1] * (value.ndim - 1)), -1 if key == "route" else np.nan, value
        ).astype(value.dtype)
        for key, value in outputs.items()
    }
