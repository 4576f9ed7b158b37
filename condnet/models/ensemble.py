"""An ensemble of conditional models over one hierarchy: the average of their class probabilities.

Each member predicts `P(class)` (a conditional member: hard-routed, only its
chosen expert runs, when its routing says so); the ensemble averages them
and derives the group probabilities from the averaged classes, so groups and
classes always agree (`P(group) = sum of P(class)` over the group's
classes). It saves as one `.keras` file (members inside) that loads with
`safe_mode=True` after `import condnet`.

Members that read documents (text models, each with its own `preprocessor`,
an adapted `TextVectorization`) may differ in vocabulary and sequence length:
`predict` on documents gives each member the documents to read with its own
vectorizer, and the ensemble's `preprocessor` puts the members' token ids side
by side (member 0's first), the ids `call` and `predict` split between them.
"""

import keras
import numpy as np
from keras import ops

from condnet.hierarchy import Hierarchy
from condnet.models.conditional_model import is_raw_text


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

    Members read images, or all read documents (each has a `preprocessor`
    giving a fixed number of token ids); the ensemble's `preprocessor` is then
    `MemberVectorizers`, None for images.
    """

    def __init__(self, hierarchy, members, member_weights=None, **kwargs):
        hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy(hierarchy)
        members = [] if members is None else list(members)
        _check_members(hierarchy, members)
        weights = _normalised_weights(member_weights, len(members))
        widths = _token_widths(members)
        super().__init__(**kwargs)
        self.hierarchy = hierarchy
        self.members = members
        self._widths = widths
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

    @property
    def preprocessor(self):
        """Documents -> every member's token ids side by side, for members that read
        documents (`MemberVectorizers`); None for members that read images."""
        return None if self._widths is None else MemberVectorizers(self.members)

    def build(self, input_shape):
        for member, shape in zip(self.members, self.member_input_shapes(input_shape)):
            if not member.built:
                member.build(shape)
        self.built = True

    def member_input_shapes(self, input_shape):
        """The input shape each member reads of `input_shape` (batch dimension first):
        all of it for images, its own token ids' columns for documents."""
        if self._widths is None:
            return [input_shape] * len(self.members)
        return [(input_shape[0], width) for width in self._widths]

    def _member_inputs(self, inputs):
        """What each member reads of `inputs`: all of it, or its own token ids' columns."""
        if self._widths is None:
            return [inputs] * len(self.members)
        ends = np.cumsum(self._widths)
        return [inputs[:, end - width : end] for end, width in zip(ends, self._widths)]

    def call(self, inputs, training=False):
        classes = sum(
            w * ops.cast(_classes(m(x, training=training)), "float32")
            for m, w, x in zip(self.members, self.member_weights, self._member_inputs(inputs))
        )
        return self._outputs(classes)

    def _outputs(self, classes):
        groups = ops.matmul(classes, ops.convert_to_tensor(self._class_to_group_matrix))
        return {"classes": classes, "groups": groups, "route": ops.argmax(groups, axis=-1)}

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, **kwargs):
        """Each member's own `predict` (routed for a hard-routed conditional member), averaged.
        Documents go to every member whole (each reads them with its own vectorizer);
        token ids are split between the members (see `preprocessor`)."""
        if kwargs:
            raise TypeError(
                "Ensemble.predict takes x, batch_size, verbose, steps and callbacks. "
                f"Received unknown arguments: {sorted(kwargs)}"
            )
        if self._widths is not None and not is_raw_text(x):
            inputs = self._member_inputs(np.asarray(x))
        else:
            inputs = [x] * len(self.members)
        classes = None
        for member, weight, member_x in zip(self.members, self.member_weights, inputs):
            outputs = member.predict(
                member_x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
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


# === Members that read documents ===


class MemberVectorizers:
    """The vectorizers of an ensemble's members as one: documents -> an int32 array of
    every member's token ids side by side, member 0's first (what `Ensemble.call` reads).

    Not a layer and never saved: it is made from the members, whose own files hold
    their vectorizers. `get_config()` gives `output_sequence_length`, the ids per
    document in all.
    """

    def __init__(self, members):
        self.vectorizers = [member.preprocessor for member in members]

    def __call__(self, texts):
        texts = np.asarray(texts, dtype=object).reshape(-1)
        ids = [ops.convert_to_numpy(vectorizer(texts)) for vectorizer in self.vectorizers]
        return np.concatenate(ids, axis=1).astype("int32")

    def get_config(self):
        return {"output_sequence_length": sum(map(_token_width, self.vectorizers))}


def _token_widths(members):
    """The token ids each member reads per document, or None when they read images; a
    mix of the two, or a vectorizer without a fixed length, is refused."""
    readers = [getattr(m, "preprocessor", None) is not None for m in members]
    if not any(readers):
        return None
    if not all(readers):
        names = [m.name for m, reads in zip(members, readers) if reads]
        others = [m.name for m, reads in zip(members, readers) if not reads]
        raise ValueError(
            f"The members read different inputs: {names} read documents (they have a "
            f"preprocessor), {others} read images. Ensemble models of one modality. "
            f"Received: members={[m.name for m in members]}"
        )
    return [_token_width(m.preprocessor, m.name) for m in members]


def _token_width(vectorizer, name=None):
    width = vectorizer.get_config().get("output_sequence_length")
    if not isinstance(width, int) or width < 1:
        raise ValueError(
            f"Member {name}'s preprocessor must give a fixed number of token ids per "
            "document (a TextVectorization with output_sequence_length), so that the "
            f"ensemble can put the members' ids side by side. Received: "
            f"output_sequence_length={width!r}"
        )
    return width
