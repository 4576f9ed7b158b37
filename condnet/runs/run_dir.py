"""A finished run directory: evaluate it on a folder, predict images, describe its parts."""

import json
import math
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np

from condnet.choices import COLOR_MODES, INFERENCE_ROUTINGS, MAX_IMAGE_SIDE
from condnet.data.checks import is_int
from condnet.data.image_folder import ImageFolder
from condnet.data.scan import IMAGE_EXTENSIONS, scan_directory
from condnet.data.text import (
    TextFolder,
    read_documents,
    scan_documents,
    token_ids,
    warn_fallbacks,
)
from condnet.evaluation.backoff import (
    answer_fields,
    back_off,
    backoff_summary,
    check_thresholds,
)
from condnet.evaluation.calibration import calibrate
from condnet.evaluation.cost import routed_macs
from condnet.evaluation.evaluate import (
    error_row,
    evaluate_model,
    predict_batch,
    prediction_row,
    within_group_of,
)
from condnet.evaluation.progress import Progress
from condnet.evaluation.unknown import unknown_fields
from condnet.hierarchy import Hierarchy
from condnet.runs.checkpoint import read_state as read_checkpoint_state
from condnet.runs.checkpoint import save_model_atomic, write_atomic
from condnet.runs.documents import (
    document_files,
    is_text_run,
    jsonl_documents,
    line_documents,
)
from condnet.runs.files import (
    BACKOFF,
    BASELINE,
    BEST,
    CALIBRATED,
    CALIBRATION_REPORT,
    CHECKPOINTS,
    CONFIG,
    HIERARCHY,
    KERAS_ARCHIVE_CONFIG,
    METRICS,
    STATE,
    UNKNOWN,
    UNKNOWN_STATISTICS,
)
from condnet.runs.options import normalised
from condnet.runs.outputs import guard, staged_folder, training_data, write_file


def load_run(run_dir, model_file=None, routing=None):
    """(model, config) of a run directory written by `condnet train`.

    `model_file` picks another model of the run (`model.calibrated.keras`)
    or any `.keras` file (a path); `routing` (`"hard"`: only the chosen
    expert runs; `"soft"`: the mixture of every expert) overrides the
    model's own routing at inference.

    `config.json` must be UTF-8 JSON with an `"options"` object (holding at
    least a valid `image_size` and `color_mode`; see `read_config`), and the
    model file a complete Keras archive of a condnet model (a `ConditionalModel`
    or an `Ensemble`) made for the run's hierarchy and image size, or the
    run's own flat baseline (`baseline.keras`, returned as a `FlatBaseline`);
    anything else is a `ValueError` that names the file and says what to do.
    """
    run_dir = Path(run_dir)
    if routing is not None and routing not in INFERENCE_ROUTINGS:
        raise ValueError(
            f"routing must be one of {list(INFERENCE_ROUTINGS)} at inference: hard runs only "
            f"the chosen expert, soft mixes every expert. Received: routing={routing!r}"
        )
    model_path, config_path = _model_path(run_dir, model_file), run_dir / CONFIG
    if model_file is not None and not model_path.is_file():
        raise ValueError(
            f"There is no model file {str(model_path)!r}. Pass model.keras, "
            "model.calibrated.keras (after `condnet calibrate`), baseline.keras (the run's flat "
            f"baseline) or the path of a .keras file. Received: model={model_file!r}"
        )
    if not run_dir.is_dir() or not model_path.is_file() or not config_path.is_file():
        _refuse_interrupted_overwrite(run_dir)
        raise ValueError(
            f"{str(run_dir)!r} is not a finished condnet run: it needs {BEST} and "
            f"{CONFIG} (written by `condnet train --out RUN_DIR`). Received: "
            f"run_dir={str(run_dir)!r}"
        )
    config = read_config(config_path)
    model = _as_run_model(run_dir, _load_model(model_path), model_path, config)
    if routing is not None:
        model.routing = routing
    return model, config


def _refuse_interrupted_overwrite(run_dir):
    """An `--overwrite` killed before the new run's first epoch left the old run aside."""
    from condnet.runs.claim import replaced_asides

    asides = replaced_asides(run_dir) if run_dir.parent.is_dir() else []
    if asides:
        raise ValueError(
            f"{str(run_dir)!r} holds no finished run: an --overwrite was interrupted before "
            f"the new run committed an epoch; the old run is in {str(asides[-1])!r}. "
            f"`condnet train DATA_DIR --out {run_dir} --resume` (or any `condnet train` into "
            "it) moves it back."
        )


def _as_run_model(run_dir, model, path, config):
    """The loaded model as the run serves it: a condnet model that fits the run, or the
    run's flat baseline as a `FlatBaseline`; any other model is refused."""
    from condnet.models.conditional_model import ConditionalModel
    from condnet.models.ensemble import Ensemble

    if isinstance(model, ConditionalModel | Ensemble):
        _check_hierarchies([(path.name, model.hierarchy), *_hierarchies(run_dir, config)], path)
    elif path.name == BASELINE and isinstance(model, keras.Model):
        preprocessor = _run_preprocessor(run_dir) if is_text_run(config) else None
        hierarchy = _run_hierarchy(run_dir, config, path)
        model = FlatBaseline(hierarchy, model, path, preprocessor=preprocessor)
    else:
        raise ValueError(
            f"{path.name} holds a {type(model).__name__} model, not a condnet model: condnet "
            f"reads a run's {BEST} (or model.calibrated.keras, an ensemble's {BEST}) and its "
            f"flat baseline {BASELINE}. Restore the run's own model file, or re-train the "
            f"run. Received: path={str(path)!r}"
        )
    _check_input_shape(model, path, config)
    return model


def _run_preprocessor(run_dir):
    """A text run's adapted TextVectorization, which its model.keras holds (its flat
    baseline's file holds none: it reads token ids)."""
    path = Path(run_dir) / BEST
    model = _load_model(path) if path.is_file() else None
    if getattr(model, "preprocessor", None) is None:
        raise ValueError(
            f"The text run {str(run_dir)!r} has no {BEST} holding its TextVectorization, "
            f"which its flat baseline reads documents with. Restore {BEST}, or re-train the "
            f"run. Received: run_dir={str(run_dir)!r}"
        )
    return model.preprocessor


def _hierarchies(run_dir, config):
    """[(file name, Hierarchy)] of the run's files that name its hierarchy."""
    found = []
    if config.get("hierarchy") is not None:
        found.append((CONFIG, Hierarchy(config["hierarchy"])))
    if (Path(run_dir) / HIERARCHY).is_file():
        found.append((HIERARCHY, read_hierarchy(Path(run_dir) / HIERARCHY)))
    return found


def _check_hierarchies(found, path):
    """Every file that names the run's hierarchy (the model, config.json, hierarchy.json)
    must name the same tree."""
    for name, tree in found[1:]:
        if tree != found[0][1]:
            raise ValueError(
                f"The run's files disagree on its hierarchy: {found[0][0]} names "
                f"{found[0][1].to_dict()} but {name} names {tree.to_dict()}, so one of them "
                "belongs to another run. Restore the run's own files, or re-train it. "
                f"Received: path={str(path)!r}"
            )


def _run_hierarchy(run_dir, config, path):
    """The run's hierarchy, for its flat baseline: that of config.json and hierarchy.json
    (which must agree), or else the one inside model.keras."""
    found = _hierarchies(run_dir, config)
    _check_hierarchies(found, path)
    if found:
        return found[0][1]
    if (Path(run_dir) / BEST).is_file():
        model = _load_model(Path(run_dir) / BEST)
        if hasattr(model, "hierarchy"):
            return model.hierarchy
    raise ValueError(
        f"The run {str(run_dir)!r} does not say which classes its flat baseline predicts: "
        f"it has no hierarchy in {CONFIG}, no {HIERARCHY} and no condnet {BEST}. Restore "
        f"one of them. Received: run_dir={str(run_dir)!r}"
    )


def _check_input_shape(model, path, config):
    """The image size and channels (or the sequence length) config.json names must be
    those the model was built for."""
    expected = input_shape_of(config)[1:]
    built = _built_shape(getattr(model, "classifier", model))
    if built is None or len(built) != len(expected) + 1:
        return
    if any(side is not None and side != want for side, want in zip(built[1:], expected)):
        options = config["options"]
        if is_text_run(config):
            raise ValueError(
                f"The run's {CONFIG} names sequence_length={options['sequence_length']!r}, "
                f"but {path.name} was built for {built[1]} token ids per document: one of "
                "them belongs to another run. Restore the run's own files, or re-train it. "
                f"Received: path={str(path)!r}"
            )
        raise ValueError(
            f"The run's {CONFIG} names image_size={options['image_size']!r} and color_mode="
            f"{options['color_mode']!r} (inputs {expected}), but {path.name} was built for "
            f"inputs {tuple(built[1:])}: one of them belongs to another run. Restore the "
            f"run's own files, or re-train it. Received: path={str(path)!r}"
        )


def _built_shape(model):
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    inputs = getattr(model, "inputs", None) or ()
    if shape is None and len(inputs) == 1:
        shape = inputs[0].shape
    return None if shape is None else tuple(shape)


class FlatBaseline(keras.Model):
    """A run's flat baseline (a plain Keras classifier over the run's classes) with the
    outputs of a conditional model, so that `predict`, `evaluate`, `info` and `serve` read
    it as they read `model.keras`.

    `classes` are the classifier's probabilities, `groups` their sums over each group's
    classes, and `route` is the group of the most probable class: a flat model has no
    experts, so the `expert` of its predictions is always their `group`. It does not route
    (`routing` is None and ignores a new value). `save` writes the classifier itself.
    A text run's baseline reads token ids: its `preprocessor` is the run's vectorizer
    (that of model.keras), None for images.
    """

    routes_at_inference = False

    def __init__(self, hierarchy, classifier, path=BASELINE, preprocessor=None, **kwargs):
        super().__init__(name="baseline", **kwargs)
        _check_classifier(classifier, hierarchy, path)
        self.hierarchy = hierarchy
        self.classifier = classifier
        self.preprocessor = preprocessor
        membership = np.zeros((hierarchy.num_classes, hierarchy.num_groups), "float32")
        membership[np.arange(hierarchy.num_classes), hierarchy.class_to_group] = 1.0
        self._membership = membership
        self._class_to_group = np.asarray(hierarchy.class_to_group, "int32")
        self.built = True

    @property
    def routing(self):
        return None

    @routing.setter
    def routing(self, value):
        pass  # a flat model runs whole for every image: there is nothing to route

    def call(self, inputs, training=False):
        classes = keras.ops.cast(self.classifier(inputs, training=training), "float32")
        groups = keras.ops.matmul(classes, keras.ops.convert_to_tensor(self._membership))
        route = keras.ops.take(
            keras.ops.convert_to_tensor(self._class_to_group), keras.ops.argmax(classes, axis=-1)
        )
        return {"classes": classes, "groups": groups, "route": route}

    def save(self, filepath, *args, **kwargs):
        return self.classifier.save(filepath, *args, **kwargs)


def _check_classifier(classifier, hierarchy, path):
    """A flat baseline: a plain Keras model with one output, a probability per class."""
    outputs = getattr(classifier, "outputs", None) or ()
    width = (
        outputs[0].shape[-1] if len(outputs) == 1 and not hasattr(classifier, "hierarchy") else None
    )
    if width != hierarchy.num_classes:
        found = (
            f"{width} values per image" if width is not None else f"a {type(classifier).__name__}"
        )
        raise ValueError(
            f"{Path(path).name} is not the run's flat baseline: that is a Keras classifier with "
            f"one output of {hierarchy.num_classes} class probabilities, and this file holds "
            f"{found}. Restore the run's own {BASELINE}, or re-train the run. "
            f"Received: path={str(path)!r}"
        )


def _model_path(run_dir, model_file):
    if model_file is None:
        return run_dir / BEST
    path = Path(model_file)
    return path if path.is_absolute() or path.parent != Path(".") else run_dir / path


# === Run files ===
# Each reader checks what condnet relies on in one file of a run and raises one
# ValueError naming the file, the problem and the fix.

_FIXES = {
    CONFIG: "`condnet train --out RUN_DIR` writes it with the run's options; re-train the run "
    "or restore the file",
    METRICS: "`condnet train` writes it when the run ends; restore the file or re-train the run",
    STATE: "`condnet train` writes it after each epoch, for --resume; restore the file, or "
    "start the run again with --overwrite",
    HIERARCHY: "`condnet train` writes it as a copy of the tree in config.json; restore it "
    "from there, or delete it",
    BACKOFF: "`condnet train` and `condnet backoff RUN_DIR` write it; delete it and run "
    "`condnet backoff RUN_DIR` to choose the thresholds again",
    UNKNOWN: "`condnet train` and `condnet unknown RUN_DIR` write it; delete it and run "
    "`condnet unknown RUN_DIR` to choose the thresholds again",
    UNKNOWN_STATISTICS: "`condnet unknown RUN_DIR` writes it with unknown.json; delete both and "
    "run `condnet unknown RUN_DIR` to fit and choose them again",
}


def read_config(path):
    """A run's config.json: an object whose `"options"` hold a valid `image_size` (pixels,
    1 to 2048, as the options allow) and `color_mode`, and whose `"hierarchy"`, when
    present, is a valid tree."""
    config = _read_json(path)
    options = _options_of(path, config)
    if is_text_run(config):
        return _text_config(path, config)
    missing = [key for key in ("image_size", "color_mode") if key not in options]
    if missing:
        raise ValueError(_bad_file(path, f'its "options" lack {missing}'))
    for key in ("image_size", "color_mode"):
        if not _valid_option(key, options[key]):
            raise ValueError(
                _bad_file(path, f'its "options" hold {key}={options[key]!r:.80}, {_EXPECTED[key]}')
            )
    if isinstance(options["image_size"], list) and len(options["image_size"]) == 1:
        options["image_size"] = options["image_size"][0]  # one side: that square
    if config.get("hierarchy") is not None:
        _tree(path, config["hierarchy"])
    return config


def _text_config(path, config):
    """A text run's config.json: its `"options"` hold a valid `sequence_length`."""
    length = config["options"].get("sequence_length")
    if not _valid_option("sequence_length", length):
        problem = f'its "options" hold sequence_length={length!r:.80}, where an int >= 1 is'
        problem += " expected"
        raise ValueError(_bad_file(path, problem))
    if config.get("hierarchy") is not None:
        _tree(path, config["hierarchy"])
    return config


def read_options(path):
    """The `"options"` object of a run's config.json, unchecked beyond being an object."""
    return _options_of(path, _read_json(path))


def _options_of(path, config):
    options = config.get("options") if isinstance(config, dict) else None
    if not isinstance(options, dict):
        raise ValueError(_bad_file(path, 'it has no "options" object'))
    return options


_EXPECTED = {
    "image_size": "where an int or a (height, width) pair of ints from "
    f"1 to {MAX_IMAGE_SIDE} pixels is expected",
    "color_mode": f"where one of {list(COLOR_MODES)} is expected",
}


def _valid_option(name, value):
    if value == "auto":  # a finished run has resolved it to pixels
        return False
    try:
        normalised(name, value)
    except (TypeError, ValueError):
        return False
    return True


def _tree(path, tree):
    try:
        return Hierarchy(tree)
    except (TypeError, ValueError) as error:
        problem = f'its "hierarchy" is not a valid tree ({str(error)[:200]})'
        raise ValueError(_bad_file(path, problem)) from None


def read_hierarchy(path):
    """A run's hierarchy.json as a `Hierarchy`."""
    try:
        return Hierarchy.from_file(path)
    except (TypeError, ValueError, RecursionError) as error:
        raise ValueError(_bad_file(path, " ".join(str(error).split())[:300].rstrip("."))) from None


def read_metrics(path):
    """A run's metrics.json: an object whose known entries have the types and ranges
    condnet reads (accuracies in [0, 1], costs >= 0, sections as objects); any may be
    missing or null."""
    metrics = _read_json(path)
    if not isinstance(metrics, dict):
        problem = f"it holds a JSON {_json_type(metrics)} where an object of metrics is expected"
        raise ValueError(_bad_file(path, problem))
    for keys, check, expected in _METRIC_ENTRIES:
        value = nested_entry(metrics, keys)
        if value is not None and not check(value):
            shown = "".join(f"[{key!r}]" for key in keys)
            problem = f"its entry {shown} is {value!r:.80}, where {expected} is expected"
            raise ValueError(_bad_file(path, problem))
    return metrics


def _fraction(value):
    return _is_number(value) and 0 <= value <= 1


def _count(value):
    return _is_number(value) and value >= 0


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_OBJECT = (lambda value: isinstance(value, dict), "an object")
_FRACTION = (_fraction, "a number from 0 to 1")
_COUNT = (_count, "a finite number >= 0")
_METRIC_ENTRIES = [
    (keys, *check)
    for keys, check in [
        *[((key,), _FRACTION) for key in ("accuracy", "group_accuracy", "gate_accuracy")],
        (("hierarchical_f1",), _FRACTION),
        (("mistake_distance",), _COUNT),
        *[(("baseline", side, "mistake_distance"), _COUNT) for side in ("flat", "conditional")],
        (("training_routing",), (lambda value: isinstance(value, str), "a string")),
        (("mixture",), _OBJECT),
        (("mixture", "accuracy"), _FRACTION),
        (("macs_per_image",), _OBJECT),
        (("macs_per_image", "routed"), _COUNT),
        (("macs_per_image", "all_experts"), _COUNT),
        (("baseline",), _OBJECT),
        *[(("baseline", side), _OBJECT) for side in ("flat", "conditional")],
        *[(("baseline", side, "accuracy"), _FRACTION) for side in ("flat", "conditional")],
        *[
            (("baseline", side, key), _COUNT)
            for side in ("flat", "conditional")
            for key in ("macs_per_image", "images_per_second", "epochs")
        ],
    ]
]


# === Back-off thresholds ===


def read_backoff(path, hierarchy=None):
    """A run's backoff.json: an object whose `"models"` map a model file of the run
    (`model.keras`, `baseline.keras`, ...) to an object with its `"thresholds"`, one per
    level (a number from 0 to 1, or null for a level that never answers); with
    `hierarchy`, exactly its levels (`condnet.evaluation.mistakes.level_names`)."""
    record = _read_json(path)
    models = record.get("models") if isinstance(record, dict) else None
    if not isinstance(models, dict):
        raise ValueError(_bad_file(path, 'it has no "models" object'))
    for name, entry in models.items():
        thresholds = entry.get("thresholds") if isinstance(entry, dict) else None
        if not _valid_thresholds(thresholds, hierarchy):
            levels = "" if hierarchy is None else f" {list(_level_names(hierarchy))}"
            problem = (
                f'its ["models"][{name!r}]["thresholds"] is {thresholds!r:.80}, where an object '
                f"with a threshold per level{levels} (a number from 0 to 1, or null) is expected"
            )
            raise ValueError(_bad_file(path, problem))
    return record


def _valid_thresholds(thresholds, hierarchy):
    if hierarchy is not None:
        try:
            check_thresholds(hierarchy, thresholds)
        except (TypeError, ValueError):
            return False
        return True
    return isinstance(thresholds, dict) and all(
        value is None or _fraction(value) for value in thresholds.values()
    )


def _level_names(hierarchy):
    from condnet.evaluation.mistakes import level_names, tree_levels

    return level_names(len(tree_levels(hierarchy)[1]))


def run_thresholds(run_dir, hierarchy, model_file=None):
    """The back-off thresholds the run's backoff.json holds for `model_file` (a model
    file of the run; model.keras by default), or None."""
    path, key = Path(run_dir) / BACKOFF, _model_key(run_dir, model_file)
    if key is None or not path.is_file():
        return None
    entry = read_backoff(path, hierarchy)["models"].get(key)
    return None if entry is None else check_thresholds(hierarchy, entry["thresholds"])


def backoff_thresholds(run_dir, hierarchy, model_file=None, thresholds=None):
    """The thresholds `predict` and `serve` back off with: `thresholds` when given (one
    per level), else the run's own (`run_thresholds`); a ValueError when it has none."""
    if thresholds is not None:
        return check_thresholds(hierarchy, thresholds)
    stored = run_thresholds(run_dir, hierarchy, model_file)
    if stored is None:
        name = _model_key(run_dir, model_file) or str(model_file)
        raise ValueError(
            f"The run {str(run_dir)!r} holds no back-off thresholds for {name} (in "
            f"{BACKOFF}). `condnet backoff RUN_DIR` chooses them on its validation split "
            "(--target-accuracy 0.95), or give them: --thresholds "
            f"{' '.join(f'{level}=0.9' for level in _level_names(hierarchy))}. "
            f"Received: run_dir={str(run_dir)!r}, model={name!r}"
        )
    return stored


def _model_key(run_dir, model_file):
    """The name backoff.json files a model under: its file name when it lies in the run."""
    path = _model_path(Path(run_dir), model_file)
    inside = path.resolve().parent == Path(run_dir).resolve()
    return path.name if inside else None


# === Unknown-class thresholds ===


def read_unknown(path, hierarchy=None):
    """A run's unknown.json: an object whose `"models"` map a model file of the run to an
    object with its `"thresholds"`, one per expert (a number from 0 to 1, or null for an
    expert that flags nothing); with `hierarchy`, exactly its groups."""
    from condnet.evaluation.unknown import check_score, check_unknown_thresholds

    record = _read_json(path)
    models = record.get("models") if isinstance(record, dict) else None
    if not isinstance(models, dict):
        raise ValueError(_bad_file(path, 'it has no "models" object'))
    for name, entry in models.items():
        thresholds = entry.get("thresholds") if isinstance(entry, dict) else None
        score = entry.get("score", "softmax") if isinstance(entry, dict) else "softmax"
        fits = _fraction if score == "softmax" else _is_number
        try:
            check_score(score)
            if hierarchy is not None:
                check_unknown_thresholds(hierarchy, thresholds, score)
            elif not isinstance(thresholds, dict) or not all(
                value is None or fits(value) for value in thresholds.values()
            ):
                raise ValueError
        except (TypeError, ValueError):
            groups = "" if hierarchy is None else f" {list(hierarchy.groups)}"
            problem = (
                f'its ["models"][{name!r}]["thresholds"] is {thresholds!r:.80} ({score!r:.40} '
                f"score), where an object with a threshold per group{groups} (a number, from 0 "
                "to 1 for the softmax score, or null) is expected"
            )
            raise ValueError(_bad_file(path, problem)) from None
    return record


def read_unknown_statistics(path):
    """A run's unknown.npz: a dict of float arrays (`<model file>/<expert>/means` and
    `/precision`), read without pickles."""
    try:
        with np.load(path, allow_pickle=False) as opened:
            return {key: opened[key] for key in opened.files}
    except (OSError, ValueError) as error:
        problem = f"it is not a NumPy .npz of arrays ({type(error).__name__}: {error})"
        raise ValueError(_bad_file(path, problem)) from None


def run_unknown_thresholds(run_dir, hierarchy, model_file=None):
    """The unknown-class thresholds the run's unknown.json holds for `model_file` (a model
    file of the run; model.keras by default), or None; their score is
    `run_unknown_detector`'s."""
    detector = run_unknown_detector(run_dir, hierarchy, model_file)
    return None if detector is None else detector.thresholds


def run_unknown_detector(run_dir, hierarchy, model_file=None):
    """The unknown-class detector of the run's unknown.json for `model_file` (a model file
    of the run; model.keras by default): an `UnknownDetector` with its score, thresholds
    and (for a feature score) the statistics in unknown.npz; or None."""
    from condnet.evaluation.unknown import UnknownDetector

    path, key = Path(run_dir) / UNKNOWN, _model_key(run_dir, model_file)
    if key is None or not path.is_file():
        return None
    entry = read_unknown(path, hierarchy)["models"].get(key)
    if entry is None:
        return None
    score = entry.get("score", "softmax")
    statistics = None
    if score == "mahalanobis":  # energy and gated_energy read the model's own weights only
        statistics = _statistics_of(Path(run_dir) / UNKNOWN_STATISTICS, key)
    return UnknownDetector(hierarchy, entry["thresholds"], score, statistics)


def _statistics_of(path, key):
    if not path.is_file():
        raise ValueError(_bad_file(path, "it is missing, and unknown.json's score reads it"))
    prefix = f"{key}/"
    return {
        name[len(prefix) :]: value
        for name, value in read_unknown_statistics(path).items()
        if name.startswith(prefix)
    }


def unknown_thresholds_of(run_dir, hierarchy, model_file=None, thresholds=None):
    """The `UnknownDetector` `predict` and `serve` flag unknown classes with: maximum-softmax
    `thresholds` when given (one per group), else the run's own; a ValueError when it has
    none."""
    from condnet.evaluation.unknown import UnknownDetector

    if thresholds is not None:
        return UnknownDetector(hierarchy, thresholds)
    stored = run_unknown_detector(run_dir, hierarchy, model_file)
    if stored is None:
        name = _model_key(run_dir, model_file) or str(model_file)
        raise ValueError(
            f"The run {str(run_dir)!r} holds no unknown-class thresholds for {name} (in "
            f"{UNKNOWN}). `condnet unknown RUN_DIR` chooses them on its validation split "
            "(--false-alarm-rate 0.05), or give them: `condnet unknown RUN_DIR --thresholds "
            f"{' '.join(f'{group}=0.5' for group in hierarchy.groups)}`. "
            f"Received: run_dir={str(run_dir)!r}, model={name!r}"
        )
    return stored


def nested_entry(value, keys):
    """value[k1][k2]..., or None where a level is missing, null or not an object."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def read_state(run_dir):
    """A run's state.json (None without one): `checkpoint.read_state`, with the types of
    the fields a resume reads checked too."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    state = _read_json(path)
    if not isinstance(state, dict):
        problem = f"it holds a JSON {_json_type(state)} where an object is expected"
        raise ValueError(_bad_file(path, problem))
    for key, check, expected in _STATE_FIELDS:
        if key not in state or not check(state[key]):
            shown = "missing" if key not in state else f"{state[key]!r:.80}"
            problem = f'its "{key}" is {shown}, where {expected} is expected'
            raise ValueError(_bad_file(path, problem))
    return read_checkpoint_state(run_dir)  # and the checkpoint a plain name inside the run


def _index(value):
    return is_int(value) and value >= 0


_STATE_FIELDS = [
    ("phase", _index, "an int >= 0"),
    ("epoch", _index, "an int >= 0"),
    ("phase_done", lambda value: isinstance(value, bool), "true or false"),
    ("checkpoint", lambda value: isinstance(value, str), "a file name"),
    ("best", lambda value: value is None or _is_number(value), "a number or null"),
    (
        "history",
        lambda rows: isinstance(rows, list) and all(isinstance(row, dict) for row in rows),
        "a list of objects",
    ),
]


def _read_json(path):
    """The JSON value of a run file; one ValueError naming the file when it cannot be read."""
    try:
        data = Path(path).read_bytes()
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        problem = f"it is not UTF-8 text ({error})"
    except RecursionError:
        problem = "it nests too deeply to read"
    except ValueError as error:  # JSONDecodeError, or an integer too long to read
        problem = "it is empty (0 bytes)" if not data else f"it is not valid JSON ({error})"
    except OSError as error:
        problem = f"it cannot be read ({error.strerror or type(error).__name__})"
    raise ValueError(_bad_file(path, problem))


def _json_type(value):
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _bad_file(path, problem):
    name = Path(path).name
    fix = _FIXES.get(name, f"restore {name}")
    return f"The run's {name} cannot be used: {problem}. {fix}. Received: path={str(path)!r}"


def _load_model(path):
    problem = _archive_problem(path)
    if problem is None:
        try:
            return keras.models.load_model(path)
        except Exception as error:  # Keras raises many types on a damaged archive
            problem = f"Keras cannot load it ({type(error).__name__}: {str(error)[:300]})"
    checkpoints = sorted(path.parent.glob(f"{CHECKPOINTS}/epoch-*.keras"))
    fallback = (
        f"copy the last epoch's checkpoint {str(checkpoints[-1])!r} over it (that epoch "
        "may not be the best one)"
        if checkpoints
        else f"copy a checkpoint from {CHECKPOINTS}/ over it if you kept one"
    )
    raise ValueError(
        f"The run's model file is corrupt: {problem}. Re-train the run "
        f"(`condnet train ... --out RUN_DIR`), or {fallback}. Received: path={str(path)!r}"
    )


def _archive_problem(path):
    """Why `path` is not a complete `.keras` zip archive, or None."""
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"it is not a complete .keras (zip) archive ({error})"
    if damaged is not None:
        return f"its member {damaged!r} fails its checksum"
    if KERAS_ARCHIVE_CONFIG not in names:
        return "it holds no config.json, so it was not written by model.save"
    return None


def evaluate_run(
    run_dir,
    data_dir,
    report_dir=None,
    batch_size=64,
    routing="hard",
    model_file=None,
    progress=False,
):
    """Evaluate a run on another folder (e.g. a test split) and write a report there.

    The headline metrics are those of `routing` (default hard: only the
    chosen expert runs); the other routing's scores are reported beside them
    (`mixture` or `hard_routed`), and so is the run's flat baseline when it
    has one (`baseline`), on the same images, scored as `condnet train` scores
    its validation split (`condnet.runs.finish.score_run`). `progress=True` reports each
    pass on standard error. With `model_file="baseline.keras"` the flat
    baseline alone is scored (`"model": "baseline"`, `"inference_routing":
    "flat"`).
    """
    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    if (Path(run_dir) / UNKNOWN).is_file():  # checked before the first pass
        read_unknown(Path(run_dir) / UNKNOWN, model.hierarchy)
    report_dir = Path(report_dir or Path(run_dir) / "evaluation")
    read = dict(data=[data_dir, *training_data([run_dir])], reads=[run_dir])
    guard(report_dir, "evaluation", flag="--report-dir", **read)
    data = folder_for(model, config, data_dir, batch_size)
    comparison = None
    if isinstance(model, FlatBaseline):
        metrics, predictions = _flat_metrics(run_dir, model, data, progress, model_file)
    else:
        metrics, comparison, predictions = _conditional_metrics(
            run_dir, model, data, progress, model_file
        )
    metrics["unknown"] = _unknown_metrics(run_dir, model, model_file, data)
    with staged_folder(report_dir, "evaluation") as partial:
        write_file(partial / METRICS, json.dumps(metrics, indent=1))
        report = (run_dir, data_dir, model, metrics, comparison, predictions)
        _write_evaluation_report(partial, *report)
    return metrics


def _unknown_metrics(run_dir, model, model_file, data):
    """The share of `data`'s images flagged unknown by each model with thresholds in the
    run's unknown.json (`condnet.runs.unknown.unknown_section`), or None."""
    from condnet.runs.unknown import unknown_section

    if not (Path(run_dir) / UNKNOWN).is_file():
        return None
    if isinstance(model, FlatBaseline):
        return unknown_section(run_dir, [("flat", model_file or BASELINE, model)], data)
    models = [("conditional", model_file or BEST, model)]
    if (Path(run_dir) / BASELINE).is_file() and model_file is None:
        models.append(("flat", BASELINE, load_run(run_dir, model_file=BASELINE)[0]))
    return unknown_section(run_dir, models, data)


def _flat_metrics(run_dir, model, data, progress, model_file):
    """The run's flat baseline scored on `data`, as the run scores it beside its model."""
    thresholds = run_thresholds(run_dir, model.hierarchy, model_file)  # checked first
    metrics, predictions = evaluate_model(
        model.classifier,
        data,
        hierarchy=model.hierarchy,
        return_predictions=True,
        progress=progress,
        progress_label="flat baseline",
    )
    metrics["within_group_accuracy"] = within_group_of(model.hierarchy, predictions)
    metrics["backoff"] = {"flat": backoff_of(model.hierarchy, predictions, thresholds, BASELINE)}
    return {**metrics, "model": "baseline", "inference_routing": "flat"}, predictions


def backoff_of(hierarchy, predictions, thresholds, name, source=f"the run's {BACKOFF}"):
    """`backoff_summary` of one model's predictions (those of `evaluate_model`) at
    `thresholds` (or None), naming its model file and where the thresholds come from."""
    summary = backoff_summary(
        hierarchy,
        predictions["labels"],
        predictions["classes"],
        thresholds,
        predictions.get("groups"),
    )
    return {"model": name, "thresholds_from": source if thresholds else None, **summary}


def _conditional_metrics(run_dir, model, data, progress, model_file=None):
    """(metrics, baseline comparison or None, predictions) of a condnet model on `data`:
    `condnet.runs.finish.score_run` (its routing, the other routing beside it, the run's
    flat baseline compared, at the costs `condnet train` recorded), and the back-off
    answers at the run's thresholds."""
    from condnet.runs.finish import score_run

    # The run files it reads are checked before the first pass over the images.
    trained = read_metrics(Path(run_dir) / METRICS) if (Path(run_dir) / METRICS).is_file() else {}
    flat = _flat_classifier(run_dir, model.hierarchy)
    thresholds = run_thresholds(run_dir, model.hierarchy, model_file)
    flat_thresholds = run_thresholds(run_dir, model.hierarchy, BASELINE) if flat else None
    metrics, predictions, flat_predictions = score_run(
        model, data, flat, _training_costs(trained), progress=progress
    )
    name = _model_key(run_dir, model_file) or str(model_file)
    metrics["backoff"] = {"conditional": backoff_of(model.hierarchy, predictions, thresholds, name)}
    if flat_predictions is not None:
        metrics["backoff"]["flat"] = backoff_of(
            model.hierarchy, flat_predictions, flat_thresholds, BASELINE
        )
    return metrics, metrics.get("baseline"), predictions


def _write_evaluation_report(
    report_dir, run_dir, data_dir, model, metrics, comparison, predictions
):
    from condnet.evaluation.analysis import gallery_examples
    from condnet.evaluation.explain import document_weigher, explainer
    from condnet.evaluation.report import write_report

    documents = getattr(model, "preprocessor", None) is not None  # a text run's
    noun = "documents" if documents else "images"
    write_report(
        report_dir,
        model.hierarchy,
        metrics,
        title=f"{Path(run_dir).name} evaluated on {data_dir}",
        header={
            "data": f"{data_dir} ({metrics['num_samples']} {noun} scored)",
            "routing": metrics["inference_routing"],
        },
        baseline=comparison,
        examples=gallery_examples(model.hierarchy, predictions),  # files of this folder
        # occlusion maps of the misrouted images; documents show their first lines
        # and the words that weighed most
        explain=document_weigher(model) if documents else explainer(model),
        documents=documents,
    )


def _flat_classifier(run_dir, hierarchy):
    """The run's flat baseline (its plain Keras classifier), or None without one."""
    path = Path(run_dir) / BASELINE
    if not path.is_file():
        return None
    classifier = _load_model(path)
    _check_classifier(classifier, hierarchy, path)
    return classifier


def _training_costs(trained):
    """MACs per image and epochs trained of both models, as `condnet train` recorded them
    for the hard-routed model (they do not depend on the images scored) in the run's
    metrics `trained`; only those it recorded."""
    return {
        side: {
            key: trained["baseline"][side][key]
            for key in ("macs_per_image", "epochs")
            if nested_entry(trained, ("baseline", side, key)) is not None
        }
        for side in ("conditional", "flat")
    }


def predict_paths(
    run_dir,
    inputs,
    batch_size=64,
    routing=None,
    model_file=None,
    progress=False,
    back_off=False,
    thresholds=None,
    unknown=False,
    unknown_thresholds=None,
    lines=None,
    jsonl=None,
):
    """Predict images (files or folders of images); one dict per image, in order.

    A text run (trained on documents) predicts documents instead: `inputs`
    are document files or folders of them, `lines` a file of one document
    per line and `jsonl` one of JSON objects with a `"text"` each (either
    `"-"`: standard input; `condnet.runs.documents`). A row's `path` is the
    file, or `SOURCE:LINE`.

    `routing` and `model_file` as in `load_run` (the model's own routing,
    hard for a run trained by `condnet train`, and model.keras by default).

    `back_off=True` adds the deepest node each image is sure of
    (`condnet.evaluation.backoff.back_off`): `answer` (the class, else the
    group, else "unsure"), `answer_level` and `answer_confidence`, with the
    thresholds the run's backoff.json holds for the model file, or with
    `thresholds` (a dict `level -> threshold`, e.g. `{"group": 0.8,
    "class": 0.9}`), which imply `back_off`.

    `unknown=True` adds `unknown` (True when the chosen expert's maximum
    softmax is below its threshold: an image of its group, but of none of its
    classes; `condnet.evaluation.unknown`) and `unknown_score`, with the
    thresholds the run's unknown.json holds for the model file, or with
    `unknown_thresholds` (a dict `group -> threshold`), which imply `unknown`.

    An image that cannot be decoded gets the row `{"path": ..., "error":
    "cannot decode: <reason>"}` instead of a prediction; no other image's
    prediction ever stands in for it. `progress=True` reports the batches on
    standard error. The rows of the run's flat baseline (`model_file=
    "baseline.keras"`) have the same keys and `"model": "baseline"`; their
    `expert` is their `group` (see `FlatBaseline`).
    """
    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    hierarchy = model.hierarchy
    if back_off or thresholds is not None:
        thresholds = backoff_thresholds(run_dir, hierarchy, model_file, thresholds)
    if unknown or unknown_thresholds is not None:
        unknown_thresholds = unknown_thresholds_of(
            run_dir, hierarchy, model_file, unknown_thresholds
        )
    extra = {"model": "baseline"} if isinstance(model, FlatBaseline) else {}
    found = (thresholds, unknown_thresholds, extra)
    if is_text_run(config):
        named = _documents_of(inputs, lines, jsonl)
        return _predict_documents(model, named, batch_size, found, progress)
    if lines is not None or jsonl is not None:
        raise ValueError(
            f"--lines and --jsonl read documents, and {str(run_dir)!r} was trained on images. "
            f"Pass image files or folders. Received: lines={lines!r}, jsonl={jsonl!r}"
        )
    paths = _image_paths(inputs)
    data = ImageFolder(
        paths,
        np.zeros(len(paths), "int32"),
        hierarchy,
        substitute_unreadable=False,
        **_image_options(config, batch_size),
    )
    results = []
    shown = Progress("predicting", len(data), enabled=progress)
    for index in range(len(data)):
        shown.update(index)
        images, _, errors = data.read_batch(index)
        valid = np.array([error is None for error in errors], bool)
        outputs = predict_batch(model, images[valid]) if valid.any() else None
        paths = [data.paths[row] for row in data.batch_rows(index)]
        results += _rows(model, paths, errors, images[valid], outputs, found)
    shown.close(f", {len(results)} images")
    return results


def _rows(model, names, errors, inputs, outputs, found):
    """The rows of one batch: a prediction for each input whose error is None (`inputs`
    and `outputs` hold those only, in order), an error row for the others."""
    thresholds, unknown_thresholds, extra = found
    hierarchy = model.hierarchy
    answers = _answers(hierarchy, outputs, thresholds)
    unknowns = _unknowns(model, inputs, outputs, unknown_thresholds)
    decoded, rows = iter(range(len(inputs))), []
    for name, error in zip(names, errors):
        if error is not None:
            rows.append(error_row(name, error))
            continue
        row = next(decoded)
        result = prediction_row(hierarchy, name, outputs, row) | extra
        if answers is not None:
            result |= answer_fields(answers, row)
        if unknowns is not None:
            result |= unknown_fields(*unknowns, row)
        rows.append(result)
    return rows


def _documents_of(inputs, lines, jsonl):
    """`[(name, text or None, error or None)]` of what a text run predicts."""
    named = document_files(inputs) if inputs else []
    named += line_documents(lines) if lines is not None else []
    named += jsonl_documents(jsonl) if jsonl is not None else []
    if not named:
        raise ValueError(
            "Nothing to predict: pass document files or folders, --lines FILE (one document "
            'per line; - reads standard input) or --jsonl FILE (objects with a "text").'
        )
    return named


def _predict_documents(model, named, batch_size, found, progress):
    """`predict_paths` of a text run: documents through the run's vectorizer, in batches."""
    results = []
    shown = Progress("predicting", -(-len(named) // batch_size), enabled=progress)
    for index, start in enumerate(range(0, len(named), batch_size)):
        shown.update(index)
        names, texts, errors = zip(*named[start : start + batch_size])
        readable = [text for text, error in zip(texts, errors) if error is None]
        ids = token_ids(model.preprocessor, readable) if readable else np.zeros((0, 1), "int32")
        outputs = predict_batch(model, ids) if readable else None
        results += _rows(model, names, errors, ids, outputs, found)
    shown.close(f", {len(results)} documents")
    return results


def _answers(hierarchy, outputs, thresholds):
    """The back-off answers of a batch's outputs, or None (no thresholds, no images)."""
    if thresholds is None or outputs is None:
        return None
    return back_off(hierarchy, outputs["classes"], thresholds, outputs["groups"])


def _unknowns(model, images, outputs, detector):
    """(scores, flagged) of a batch (`condnet.evaluation.unknown.UnknownDetector`), or None."""
    if detector is None or outputs is None:
        return None
    return detector(model, images, outputs)


def input_shape_of(config):
    """`(None, height, width, channels)` of the images a run's model takes, or
    `(None, sequence_length)` of a text run's token ids."""
    if is_text_run(config):
        return (None, config["options"]["sequence_length"])
    size = config["options"]["image_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels = 1 if config["options"]["color_mode"] == "grayscale" else 3
    return (None, *size, channels)


def run_info(run_dir, model_file=None):
    """Hierarchy, parameters per part and multiply-accumulates per image for each route.

    An ensemble (`condnet ensemble`) is refused: its members are runs of their own.
    """
    model, config = load_run(run_dir, model_file=model_file)
    _refuse_ensemble(run_dir, model, config, "info", "describes the parts and routes of one model")
    return model_info(model, config)


EXTENDED = "extended_from"  # config.json's section that marks a run `condnet extend` wrote


def refuse_extended(run_dir, config, command):
    """An extended run's validation split spans the old run's folder and the new one, so
    what draws the split again from config.json (resume, calibrate, backoff, unknown)
    cannot run on it."""
    if not isinstance(config.get(EXTENDED), dict):
        return
    raise ValueError(
        f"{str(run_dir)!r} was written by `condnet extend` (from {config[EXTENDED].get('run')}); "
        f"its validation split spans two folders, so `condnet {command}` cannot draw it again. "
        "Extend the original run again with other settings, or train from scratch. "
        f"Received: run_dir={str(run_dir)!r}"
    )


def _refuse_ensemble(run_dir, model, config, command, what):
    from condnet.models.ensemble import Ensemble

    if not isinstance(model, Ensemble):
        return
    members = nested_entry(config, ("ensemble", "members"))
    members = members if isinstance(members, list) else "listed in its config.json"
    raise ValueError(
        f"{str(run_dir)!r} is an ensemble of {len(model.members)} runs (written by `condnet "
        f"ensemble`), and `condnet {command}` {what}. Run it on the member runs instead: "
        f"{members}. Received: run_dir={str(run_dir)!r}"
    )


def model_info(model, config):
    """`run_info` of a loaded run's model and config."""
    if isinstance(model, FlatBaseline):
        return _flat_info(model, config)
    parts = {
        "trunk": model.trunk,
        "gate": model.gate,
        **{f"expert {g}": e for g, e in model.experts.items()},
    }
    params = {
        name: int(part.count_params()) if part is not None else 0 for name, part in parts.items()
    }
    # A nested expert costs its costliest route (`condnet.evaluation.cost.routed_macs`).
    costs = routed_macs(model, input_shape_of(config)[1:])
    macs = {"trunk": costs["trunk"], "gate": costs["gate"]}
    macs.update({f"expert {group}": cost for group, cost in costs["experts"].items()})
    from condnet.vision.image_model import taps_of

    return {
        "hierarchy": model.hierarchy.to_dict(),
        "routing": model.routing,
        "taps": taps_of(model),
        "parameters": params,
        "macs": macs,
        "macs_per_route": costs["routes"],
        "macs_all_experts": costs["all_experts"],
    }


def _flat_info(model, config):
    """`model_info` of the run's flat baseline: one part, the same cost for every image."""
    macs = routed_macs(model.classifier, input_shape_of(config)[1:])["routed"]
    return {
        "model": "baseline",
        "hierarchy": model.hierarchy.to_dict(),
        "routing": None,
        "parameters": {"baseline": int(model.classifier.count_params())},
        "macs": {"baseline": macs},
        "macs_per_route": {group: macs for group in model.hierarchy.groups},
        "macs_all_experts": macs,
    }


def calibrate_run(run_dir, break_lock=False, progress=False):
    """`condnet calibrate`: calibrate a run on its own validation split.

    The split is drawn again from the run's `config.json` (same folder,
    hierarchy, share or fold indices, and seed). Writes
    `RUN_DIR/model.calibrated.keras` and `RUN_DIR/calibration.json`, and
    returns the report of `calibrate`. Holds the run's lock (`run_lock`;
    `break_lock` removes a stale one). `progress=True` says what it does on
    standard error.
    """
    from condnet.runs.lock import run_lock

    with run_lock(run_dir, command="calibrate", break_lock=break_lock):
        return _calibrate_locked(run_dir, progress)


def _calibrate_locked(run_dir, progress=False):
    from condnet.runs.run_data import check_split, load_data

    model, config = load_run(run_dir)
    _refuse_ensemble(
        run_dir,
        model,
        config,
        "calibrate",
        "fits the temperatures of one model's gate and experts on its own validation split",
    )
    refuse_extended(run_dir, config, "calibrate")
    # A text run's documents are read with its own vectorizer (that of model.keras).
    vectorizer = getattr(model, "preprocessor", None)
    train_data, validation = load_data(config["options"], vectorizer=vectorizer)
    check_split(run_dir, config["options"]["data_dir"], train_data, validation)
    noun = "documents" if is_text_run(config) else "images"
    if validation is None:
        raise ValueError(
            f"The run {str(run_dir)!r} has no validation split (validation_split=0), and "
            f"temperatures must be fitted on {noun} the model did not train on. Train "
            "with --validation-split 0.2 (or more)."
        )
    if progress:
        print(
            f"Fitting the gate and expert temperatures on {validation.num_samples} validation "
            f"{noun} ...",
            file=sys.stderr,
            flush=True,
        )
    calibrated, report = calibrate(model, validation)
    save_model_atomic(calibrated, Path(run_dir) / CALIBRATED)
    report = {**report, "model": CALIBRATED}
    write_atomic(Path(run_dir) / CALIBRATION_REPORT, json.dumps(report, indent=1) + "\n")
    return report


# === Helpers ===


def _image_options(config, batch_size):
    options = config["options"]
    return {
        "image_size": options["image_size"],
        "color_mode": options["color_mode"],
        "batch_size": batch_size,
    }


def folder_for(model, config, data_dir, batch_size):
    """An ImageFolder of `data_dir` labelled with the run's own hierarchy (a TextFolder,
    read with the model's vectorizer, for a text run)."""
    hierarchy = model.hierarchy
    scan = scan_documents if is_text_run(config) else scan_directory
    try:
        found, paths, labels = scan(data_dir, hierarchy)
    except ValueError as flat_error:
        try:
            found, paths, labels = scan(data_dir)
        except ValueError:
            raise flat_error from None
        if found != hierarchy:
            raise ValueError(
                f"The folders of {str(data_dir)!r} describe the hierarchy {found.to_dict()}, "
                f"but the run was trained on {hierarchy.to_dict()}. Evaluate on folders with "
                "the run's groups and classes."
            ) from None
    if is_text_run(config):
        texts, fallbacks = read_documents(paths)
        warn_fallbacks(data_dir, fallbacks, len(texts))
        vectorizer = model.preprocessor
        return TextFolder(texts, labels, hierarchy, vectorizer, batch_size, paths=paths)
    return ImageFolder(
        paths,
        labels,  # indices in `found`, which equals the run's hierarchy
        hierarchy,
        substitute_unreadable=False,
        **_image_options(config, batch_size),
    )


def _image_paths(inputs):
    """The image files named by `inputs`: files as given, folders searched for images.

    An input that exists but is not a regular file (a device such as
    `/dev/zero`, a FIFO) is kept: the decoder refuses it without reading,
    and its row says why.
    """
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            raise ValueError(
                f"No such image file or folder: {str(item)!r}. Pass image files or folders "
                f"of images. Received: {str(item)!r}"
            )
    if not paths:
        raise ValueError(
            "No images found. Pass image files or folders holding files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}. Received: {[str(i) for i in inputs]}"
        )
    return paths
