"""What a report says of a model, computed apart from how it is drawn: the verdict against
the flat baseline, where the gap is, and which examples the gallery shows."""

import math

import numpy as np

# The two models a report compares: their key in a section, and their name.
BACKOFF_SIDES = (("conditional", "conditional (routed)"), ("flat", "flat baseline"))


# === The flat baseline ===


def baseline_verdict(conditional, flat, num_samples=None, noun="images"):
    """One line: which model is more accurate, at what cost, and, given the
    `num_samples` images (or other `noun`) scored, whether the difference is more
    than noise."""
    if "accuracy" not in conditional or "accuracy" not in flat:
        return "No verdict: both models need an accuracy."
    gain = conditional["accuracy"] - flat["accuracy"]
    cost = ""
    if conditional.get("macs_per_image") and flat.get("macs_per_image"):
        cost = (
            f" at {conditional['macs_per_image'] / flat['macs_per_image']:.2f}x its MACs per "
            f"{noun[:-1]}"
        )
    error = difference_error(conditional["accuracy"], flat["accuracy"], num_samples)
    if abs(gain) < 0.005:
        noise = f"; {_error_words(error, num_samples, noun)}" if error else ""
        return f"The conditional model ties the flat baseline ({gain:+.4f}{noise}){cost}."
    if error and abs(gain) <= 2 * error:
        side = "ahead of" if gain > 0 else "behind"
        return (
            f"The conditional model is {abs(gain):.4f} accuracy {side} the flat baseline{cost}, "
            "within noise: less than two standard errors "
            f"({_error_words(error, num_samples, noun)})."
        )
    better = "beats" if gain > 0 else "loses to"
    noise = ""
    if error:
        words = _error_words(error, num_samples, noun)
        noise = f" ({abs(gain) / error:.1f} standard errors; {words})"
    gap = f"{abs(gain):.4f} accuracy{cost}{noise}"
    return f"The conditional model {better} the flat baseline by {gap}."


def difference_error(accuracy, other, num_samples):
    """The standard error of the difference of two accuracies on `num_samples` images:
    sqrt(p(1-p)/n) x sqrt(2) at their mean p, as if the two were scored on independent
    images. Both models score the same images, which usually makes the true error
    smaller, so this is a simple bound. None without a positive `num_samples`."""
    if not num_samples or num_samples <= 0:
        return None
    mean = (accuracy + other) / 2
    return math.sqrt(mean * (1 - mean) / num_samples) * math.sqrt(2)


def _error_words(error, num_samples, noun="images"):
    return (
        f"standard error of the difference {error:.4f} on {num_samples} {noun}, "
        "sqrt(p(1-p)/n) x sqrt(2): a simple bound"
    )


def gap_sources(conditional, flat, noun="images"):
    """One line comparing the two models' gate part (the right group) and experts' part
    (the right class given the true group), and which of them is behind, or None when
    either model lacks `group_accuracy` or `within_group_accuracy`. `noun`: what was
    scored, "images" or "documents"."""
    keys = ("group_accuracy", "within_group_accuracy")
    if not all(key in conditional and key in flat for key in keys):
        return None
    (gate, flat_group), (experts, flat_within) = ((conditional[k], flat[k]) for k in keys)
    # Compared as printed (4 decimals), so that equal numbers read as equal.
    gate_part, experts_part = round(gate - flat_group, 4), round(experts - flat_within, 4)
    line = (
        f"Where: the right group for {gate:.4f} of the {noun} against {flat_group:.4f} for "
        f"the flat model ({gate_part:+.4f}); given the true group, the right class "
        f"for {experts:.4f} against {flat_within:.4f} ({experts_part:+.4f})."
    )
    loss = _loss_owner(gate_part, experts_part)
    return f"{line} {loss}" if loss else line


def _loss_owner(gate_part, experts_part):
    """Which part of the conditional model is behind the flat model, in words."""
    if gate_part >= 0 and experts_part >= 0:
        return ""
    if experts_part >= 0:
        return "The loss is the gate's: the experts are not behind."
    if gate_part >= 0:
        return "The loss is the experts': the gate is not behind."
    if gate_part == experts_part:
        return f"The gate and the experts lose as much ({gate_part:+.4f} each)."
    larger = "the gate's" if gate_part < experts_part else "the experts'"
    return f"The larger loss is {larger}."


# === Example images ===


GALLERY_KINDS = (
    ("misrouted", "sent to another group's expert"),
    ("misclassified", "right expert, wrong class"),
    ("correct", "right class"),
)
PER_KIND = 8
DOCUMENT_KINDS = GALLERY_KINDS[:2]  # misrouted, misclassified: what there is to read


def gallery_examples(hierarchy, predictions):
    """The `examples` of `write_report` from `evaluate_model(..., return_predictions=True)`'s
    predictions: one dict per image. A flat classifier's (no `route`) expert is the group
    of its class."""
    classes = predictions["classes"].argmax(1)
    groups = np.asarray(hierarchy.class_to_group)
    routes = predictions.get("route", groups[classes])
    return [
        {
            "path": path,
            "true": hierarchy.classes[label],
            "predicted": hierarchy.classes[predicted],
            "expert": hierarchy.groups[route],
            "true_group": hierarchy.groups[groups[label]],
            "confidence": float(row[predicted]),
        }
        for path, label, predicted, route, row in zip(
            predictions["paths"], predictions["labels"], classes, routes, predictions["classes"]
        )
    ]


def across_classes(examples, count):
    """Up to `count` of `examples`, taken round-robin over their true classes (in the order
    the classes first appear; each class's examples in their order), so that one class
    cannot fill a gallery."""
    by_class = {}
    for example in examples:
        by_class.setdefault(example["true"], []).append(example)
    queues, chosen = list(by_class.values()), []
    for rank in range(max(map(len, queues), default=0)):
        chosen += [queue[rank] for queue in queues if rank < len(queue)]
    return chosen[:count]


def example_kind(example):
    """`"misrouted"`, `"misclassified"` or `"correct"`: which gallery an example belongs to."""
    if example["expert"] != example["true_group"]:
        return "misrouted"
    return "correct" if example["predicted"] == example["true"] else "misclassified"


def chosen_examples(examples, kind):
    """The examples a gallery of `kind` shows: up to `PER_KIND`, across the classes."""
    return across_classes([e for e in examples if example_kind(e) == kind], PER_KIND)
