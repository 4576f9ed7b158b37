"""Unknown classes inside known groups: flag an image its expert knows no class of.

An image of a group the model knows but of a class none of its experts was
trained on ("a dog, not a breed I know") is still routed to an expert, which
then spreads its probability over classes that are all wrong. The score of an
image is the **maximum softmax probability of the expert it was routed to**:
that expert's class probabilities, renormalised within its group (under hard
routing they are the expert's own softmax; under soft routing, its group's
share of the mixture divided by the gate's probability). A low score says the
expert recognises none of its classes. The heads end in a softmax, so the
probabilities are all a finished model outputs; the scores that need the
logits before it read them from the expert's last Dense (below). The flat
baseline's comparison point is its maximum softmax probability over all its
classes, scored within the group of its most probable class.

Each expert has its own threshold, chosen on images of known classes that the
model did not train on (the validation split) for a target false-alarm rate:
the share of the known-class images routed to that expert that it flags
unknown (5% by default). An image is flagged when its score is below the
threshold of its expert; an expert with no threshold (None) flags nothing.
`auroc` and `detection_rate` measure how well the score separates the
images of left-out classes from those of known ones.

Other scores read what the expert computes before its softmax
(`condnet.evaluation.unknown_features`): `"energy"` (the log-sum-exp of its
logits), `"gated_energy"` (that plus the log of the gate's probability of
the expert's group) and `"mahalanobis"` (minus the Mahalanobis distance of its
penultimate features to the nearest of its classes' means, fitted on the
training split). `UnknownDetector` holds a score, its thresholds and, for
"mahalanobis", its statistics, and flags a batch of images.
"""

import math

import numpy as np

from condnet.choices import UNKNOWN_SCORES

FALSE_ALARM_RATE = 0.05
DEFAULT_SCORE = "gated_energy"  # of `condnet unknown`: see benchmarks/unknown.py


# === Scores ===


def unknown_scores(hierarchy, class_probabilities, route=None):
    """The score of each image (high: a class the expert knows) and the group it is scored in.

    Args:
        hierarchy: `Hierarchy`.
        class_probabilities: array `(num_samples, num_classes)`.
        route: optional int array `(num_samples,)`: the group each image was
            routed to (a conditional model's `route`; -1 for an image with no
            prediction). With it, the score is the maximum of that group's
            class probabilities renormalised to sum to 1: the chosen expert's
            maximum softmax. Defaults to `None`: a flat model, whose score is
            its maximum class probability, in the group of that class.

    Returns:
        A dict: `score` (a float array; NaN where an image has no
        prediction) and `route` (the group index each image is scored in).
    """
    classes = _probabilities(hierarchy, class_probabilities)
    if route is None:
        route = np.asarray(hierarchy.class_to_group)[classes.argmax(-1)] if len(classes) else []
        return {"score": classes.max(-1, initial=0.0), "route": np.asarray(route, "int64")}
    route = _route(hierarchy, route, len(classes))
    scores = np.full(len(classes), np.nan)
    for g, group in enumerate(hierarchy.groups):
        rows = route == g
        within = classes[rows][:, hierarchy.group_slice(group)]
        sums = within.sum(-1)
        best = np.divide(
            within.max(-1, initial=0.0), sums, out=np.full(len(sums), np.nan), where=sums > 0
        )
        scores[rows] = best
    return {"score": scores, "route": route}


def scored_route(model, outputs):
    """The `route` argument of `unknown_scores` for `model`'s `outputs`: its route, or None
    for a model that does not route (its `routing` is None: a flat model, whose `route`
    is only the group of its most probable class)."""
    return None if getattr(model, "routing", None) is None else outputs["route"]


def flag_unknown(hierarchy, scored, thresholds, score="softmax"):
    """Whether each image is flagged unknown: its score is below its expert's threshold.

    Args:
        hierarchy: `Hierarchy`.
        scored: the dict of `unknown_scores`.
        thresholds: dict `group -> threshold` (a probability for "softmax", any
            number for another score, or None for an expert that flags
            nothing), one per group.
        score: the score the thresholds are of (`UNKNOWN_SCORES`). Defaults to "softmax".

    Returns:
        A bool array; False where an image has no score (NaN).
    """
    cuts = check_unknown_thresholds(hierarchy, thresholds, score)
    values = np.array([-np.inf if cuts[g] is None else cuts[g] for g in hierarchy.groups])
    route = np.asarray(scored["route"])
    cut = np.where(route >= 0, values[np.maximum(route, 0)], -np.inf)
    with np.errstate(invalid="ignore"):
        return np.asarray(scored["score"]) < cut


def unknown_fields(scored, flagged, row):
    """What a prediction row says of image `row`: `unknown` (None when it has no score)
    and `unknown_score`, the chosen expert's score (its maximum softmax by default)."""
    score = float(scored["score"][row])
    known = not math.isnan(score)
    return {
        "unknown": bool(flagged[row]) if known else None,
        "unknown_score": score if known else None,
    }


class UnknownDetector:
    """A score, each expert's threshold on it and what the score reads: flags unknown classes.

    Args:
        hierarchy: `Hierarchy` of the model it scores.
        thresholds: dict `group -> threshold or None`, one per group (None:
            an expert that flags nothing; see `check_unknown_thresholds`).
        score: str, one of `UNKNOWN_SCORES`. Defaults to `"softmax"`, which reads the
            class probabilities alone; the others read the expert's penultimate
            features as well ("gated_energy" also the gate's probabilities).
        statistics: dict of arrays, the class means and precision of each
            expert (`condnet.evaluation.unknown_features.fit_statistics`);
            required by "mahalanobis". Defaults to `None`.

    Example:

    ```python
    detector = UnknownDetector(hierarchy, {"cat": 0.6, "dog": 0.5})
    scored, flagged = detector(model, images, model.predict(images))
    ```
    """

    def __init__(self, hierarchy, thresholds, score="softmax", statistics=None):
        self.score = check_score(score)
        self.thresholds = check_unknown_thresholds(hierarchy, thresholds, score)
        if score == "mahalanobis" and not statistics:
            raise ValueError(
                "The mahalanobis score needs each expert's class means and precision, fitted "
                "on training images (`condnet unknown RUN_DIR` fits and stores them). "
                f"Received: statistics={statistics!r:.80}"
            )
        self.hierarchy = hierarchy
        self.statistics = dict(statistics or {})
        self._readers = (None, None)  # (model, its feature readers), built once per model

    def scores(self, model, images, outputs):
        """`unknown_scores`' dict (score, route) of `model`'s `outputs` on `images`."""
        scored = unknown_scores(self.hierarchy, outputs["classes"], scored_route(model, outputs))
        if self.score == "softmax":
            return scored
        from condnet.evaluation import unknown_features

        if self._readers[0] is not model:
            self._readers = (model, unknown_features.feature_readers(model))
        readers = self._readers[1]
        features = unknown_features.read_features(model, readers, images)
        scored["score"] = unknown_features.feature_scores(
            self.hierarchy,
            readers,
            features,
            scored["route"],
            self.statistics,
            self.score,
            groups=outputs.get("groups"),
        )
        return scored

    def __call__(self, model, images, outputs):
        """`(scored, flagged)` of a batch: the scores and whether each image is flagged."""
        scored = self.scores(model, images, outputs)
        return scored, flag_unknown(self.hierarchy, scored, self.thresholds, self.score)


# === Choosing the thresholds ===


def choose_unknown_thresholds(
    hierarchy, class_probabilities, route=None, false_alarm_rate=FALSE_ALARM_RATE
):
    """Per expert, the highest threshold that flags at most `false_alarm_rate` of its images.

    Every image given must be of a known class (the validation split): each
    one flagged is a false alarm. An image counts for the expert it is
    routed to, since that expert scores it at inference; a misrouted image
    counts too. An expert that no image reaches gets None (it flags
    nothing).

    Args:
        hierarchy: `Hierarchy`.
        class_probabilities: array `(num_samples, num_classes)` of known-class images.
        route: as in `unknown_scores` (None: a flat model).
        false_alarm_rate: float in [0, 1). Defaults to 0.05.

    Returns:
        A dict `group -> threshold or None`, in the hierarchy's order.
    """
    rate = check_false_alarm_rate(false_alarm_rate)
    scored = unknown_scores(hierarchy, class_probabilities, route)
    return {
        group: highest_threshold(scored["score"][scored["route"] == g], rate)
        for g, group in enumerate(hierarchy.groups)
    }


def highest_threshold(scores, false_alarm_rate):
    """The highest `t` such that the share of `scores` below `t` is at most
    `false_alarm_rate`, or None without finite scores."""
    scores = np.sort(np.asarray(scores, "float64")[np.isfinite(scores)])
    if not len(scores):
        return None
    allowed = math.floor(false_alarm_rate * len(scores) + 1e-9)
    return float(scores[min(allowed, len(scores) - 1)])


# === How well the score separates unknown classes ===


def auroc(known_scores, unknown_scores):
    """The area under the ROC curve of flagging by a low score: the probability that an
    image of an unknown class scores below one of a known class (ties count half).
    0.5 is chance, 1 a perfect separation. Computed from ranks (Mann-Whitney U)."""
    known = _finite(known_scores, "known_scores")
    unknown = _finite(unknown_scores, "unknown_scores")
    ranks = _average_ranks(np.concatenate([unknown, known]))
    below = ranks[: len(unknown)].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(1 - below / (len(unknown) * len(known)))


def detection_rate(known_scores, unknown_scores, false_alarm_rate=FALSE_ALARM_RATE):
    """The share of unknown-class images flagged at the threshold that flags at most
    `false_alarm_rate` of the known-class images (`highest_threshold`)."""
    rate = check_false_alarm_rate(false_alarm_rate)
    known = _finite(known_scores, "known_scores")
    unknown = _finite(unknown_scores, "unknown_scores")
    return float(np.mean(unknown < highest_threshold(known, rate)))


def _average_ranks(values):
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_ranks = ends - (counts - 1) / 2
    ranks = np.empty(len(values))
    ranks[order] = mean_ranks[inverse]
    return ranks


# === Input checks ===


def check_false_alarm_rate(false_alarm_rate):
    """A false-alarm rate: a number in [0, 1)."""
    number = isinstance(false_alarm_rate, int | float) and not isinstance(false_alarm_rate, bool)
    if not number or not 0 <= false_alarm_rate < 1:  # also false for NaN
        raise ValueError(
            "The false-alarm rate must be a number in [0, 1), e.g. 0.05 (the share of "
            "known-class images an expert may flag unknown). "
            f"Received: false_alarm_rate={false_alarm_rate!r:.80}"
        )
    return float(false_alarm_rate)


def check_score(score):
    """An unknown-class score: one of `UNKNOWN_SCORES`."""
    if score not in UNKNOWN_SCORES:
        raise ValueError(
            f"The unknown-class score must be one of {list(UNKNOWN_SCORES)}. "
            f"Received: score={score!r:.80}"
        )
    return score


def check_unknown_thresholds(hierarchy, thresholds, score="softmax"):
    """A dict with one threshold per group, each a number (in [0, 1] for "softmax") or
    None; returned as a new dict in the hierarchy's order."""
    check_score(score)
    groups = list(hierarchy.groups)
    if not isinstance(thresholds, dict):
        raise TypeError(
            f"Unknown-class thresholds must be a dict with one threshold per group, {groups}. "
            f"Received: thresholds={thresholds!r:.200}"
        )
    if set(thresholds) != set(groups):
        raise ValueError(
            f"Unknown-class thresholds must name each group of the hierarchy once: {groups}. "
            f"Received: thresholds for {sorted(map(str, thresholds))}"
        )
    for group in groups:
        value = thresholds[group]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fits = number and (0 <= value <= 1 if score == "softmax" else math.isfinite(value))
        if value is not None and not fits:
            expected = "a probability in [0, 1]" if score == "softmax" else "a finite number"
            raise ValueError(
                f"The unknown-class threshold of {group} ({score} score) must be {expected}, "
                f"or None for an expert that flags nothing. Received: thresholds[{group!r}]="
                f"{value!r:.80}"
            )
    return {g: None if thresholds[g] is None else float(thresholds[g]) for g in groups}


def _probabilities(hierarchy, values):
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != hierarchy.num_classes:
        raise ValueError(
            f"class_probabilities must have shape (num_samples, {hierarchy.num_classes}): one "
            f"column per class. Received: class_probabilities with shape {values.shape}"
        )
    return values


def _route(hierarchy, route, rows):
    route = np.asarray(route)
    valid = route.shape == (rows,) and np.issubdtype(route.dtype, np.integer)
    if not valid or (rows and not (-1 <= route.min() and route.max() < hierarchy.num_groups)):
        raise ValueError(
            f"route must hold one group index per image (0 to {hierarchy.num_groups - 1}, or "
            f"-1 for no prediction), {rows} in all. Received: route with shape {route.shape} "
            f"and dtype {route.dtype}"
        )
    return route.astype("int64")


def _finite(scores, name):
    scores = np.asarray(scores, "float64").ravel()
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise ValueError(f"{name} must hold at least one finite score. Received: none")
    return scores
