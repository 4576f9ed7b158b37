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
        weights: optional list of non-negative weights, one per member
            (normalised); defaults to equal weights.
    """

    def __init__(self, hierarchy, members, member_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy(hierarchy)
        if not members:
            raise ValueError("An ensemble needs at least one member. Received: members=[]")
        for i, member in enumerate(members):
            other = getattr(member, "hierarchy", None)
            if other is not None and other != self.hierarchy:
                raise ValueError(
                    f"Member {i} ({member.name}) has another hierarchy than the ensemble: "
                    f"{other.to_dict()} vs {self.hierarchy.to_dict()}. Ensemble models "
                    "trained on the same groups and classes."
                )
        self.members = list(members)
        weights = np.ones(len(members)) if member_weights is None else np.asarray(member_weights)
        if weights.shape != (len(members),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"member_weights must be {len(members)} non-negative numbers, not all 0. "
                f"Received: member_weights={member_weights!r}"
            )
        self.member_weights = [float(w) for w in weights / weights.sum()]
        columns = np.zeros((self.hierarchy.num_classes, self.hierarchy.num_groups), "float32")
        columns[np.arange(self.hierarchy.num_classes), self.hierarchy.class_to_group] = 1.0
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
