"""An ensemble of conditional models over one hierarchy: the average of their class probabilities.

Each member predicts `P(class)` (a conditional member: hard-routed, only its
chosen expert runs, when its routing says so); the ensemble averages them
and derives the group probabilities from the averaged classes, so groups and
classes always agree (`P(group) = sum of P(class)` over the group's
classes). It saves as one `.keras` file (members inside) that loads with
`safe_mode=True` after `import condnet`.
"""

import keras
import numpy as np
from keras import ops

from condnet.hierarchy import Hierarchy


@keras.saving.register_keras_serializable(package="condnet")
class Ensemble(keras.Model):
    """The mean of `members`' class probabilities.

    Args:
        hierarchy: the members' shared `Hierarchy` (same groups, classes, order).
        members: list of models with a `"classes"` output (ConditionalModels)
            or a `(batch, num_classes)` softmax output (flat classifiers).
        member_weights: optional list of non-negative weights, one per member,
            not all 0 (normalised to sum to 1). Defaults to `None` (equal
            weights).
        **kwargs: passed to `keras.Model` (`name`, `dtype`).
    """

    def __init__(self, hierarchy, members, member_weights=None, **kwargs):
        hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy(hierarchy)
        members = [] if members is None else list(members)
        _check_members(hierarchy, members)
        weights = _normalised_weights(member_weights, len(members))
        super().__init__(**kwargs)
        self.hierarchy = hierarchy
        self.members = members
        self.member_weights = weights
        columns = np.zeros((hierarchy.num_classes, hierarchy.num_groups), "float32")
        columns[np.arange(hierarchy.num_classes), hierarchy.class_to_group] = 1.0
        self._class_to_group_matrix = columns
        if all(member.built for member in self.members):
            self.built = True  # no weights of its own: built members make it whole

    @property
    def routing(self):
        """The conditional members' routing ("mixed" when they differ; None: no such member)."""
        routings = {m.routing for m in self.members if hasattr(m, "routes_at_inference")}
        return routings.pop() if len(routings) == 1 else ("mixed" if routings else None)

    @routing.setter
    def routing(self, value):
        for member in self.members:
            if hasattr(member, "routes_at_inference"):
                member.routing = value

    @property
    def routes_at_inference(self):
        return any(getattr(m, "routes_at_inference", False) for m in self.members)

    def build(self, input_shape):
        for member in self.members:
            if not member.built:
                member.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        classes = sum(
            w * ops.cast(_classes(m(inputs, training=training)), "float32")
            for m, w in zip(self.members, self.member_weights)
        )
        return self._outputs(classes)

    def _outputs(self, classes):
        groups = ops.matmul(classes, ops.convert_to_tensor(self._class_to_group_matrix))
        return {"classes": classes, "groups": groups, "route": ops.argmax(groups, axis=-1)}

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, **kwargs):
        """Each member's own `predict` (routed for a hard-routed conditional member), averaged."""
        if kwargs:
            raise TypeError(
                "Ensemble.predict takes x, batch_size, verbose, steps and callbacks. "
                f"Received unknown arguments: {sorted(kwargs)}"
            )
        classes = None
        for member, weight in zip(self.members, self.member_weights):
            outputs = member.predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
            term = weight * np.asarray(_classes(outputs), "float32")
            classes = term if classes is None else classes + term
        groups = classes @ self._class_to_group_matrix
        return {"classes": classes, "groups": groups, "route": groups.argmax(axis=-1)}

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "hierarchy": self.hierarchy.get_config(),
            "members": [serialize(m) for m in self.members],
            "member_weights": self.member_weights,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["hierarchy"] = Hierarchy.from_config(config["hierarchy"])
        config["members"] = [keras.saving.deserialize_keras_object(m) for m in config["members"]]
        return cls(**config)


def _classes(outputs):
    return outputs["classes"] if isinstance(outputs, dict) else outputs


def _check_members(hierarchy, members):
    if not members:
        raise ValueError("An ensemble needs at least one member. Received: members=[]")
    for i, member in enumerate(members):
        other = getattr(member, "hierarchy", None)
        if other is not None and other != hierarchy:
            raise ValueError(
                f"Member {i} ({member.name}) has another hierarchy than the ensemble: "
                f"{other.to_dict()} vs {hierarchy.to_dict()}. Ensemble models "
                "trained on the same groups and classes."
            )


def _normalised_weights(member_weights, count):
    weights = np.ones(count) if member_weights is None else np.asarray(member_weights)
    if weights.shape != (count,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"member_weights must be {count} non-negative numbers, not all 0. "
            f"Received: member_weights={member_weights!r}"
        )
    return [float(w) for w in weights / weights.sum()]
