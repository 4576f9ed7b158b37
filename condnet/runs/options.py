"""The options of the recipe and of the commands that use a trained run: frozen, checked
dataclasses that the CLI's flags are generated from."""

import dataclasses
import importlib
import math
import numbers
from pathlib import Path

from condnet.choices import (
    AUGMENT_POLICIES,
    CACHE_POLICIES,
    COLOR_MODES,
    DISPATCHES,
    DISTRIBUTE,
    HUB_TEXT_TRUNK,
    INFERENCE_ROUTINGS,
    LR_SCHEDULES,
    MAX_IMAGE_SIDE,
    MODALITIES,
    PLACEMENTS,
    PREPROCESS_MODES,
    ROUTINGS,
    SMALL_CNN_FILTERS,
    STAGED_MIN_EPOCHS,
    STRATEGIES,
    TEXT_DEFAULTS,
    TEXT_TRUNKS,
)
from condnet.hierarchy import Hierarchy
from condnet.models.precision import PRECISIONS

SCHEDULES = ("coarse_to_fine",)
_MODEL = "condnet.models.conditional_model"  # the validators of the routing settings
# Keys of config.json's "options" that name the run's folders rather than options.
RUN_KEYS = ("data_dir", "run_dir")


def _option(default, help, check, cli=True, **argparse_kwargs):
    """A field: its default, its help text, its check (which may normalise the value), and
    what `argparse` needs beyond that (`action`, `choices`, `metavar`, `type`, `nargs`)."""
    metadata = dict(help=help, check=check, cli=cli, argparse=argparse_kwargs)
    return dataclasses.field(default=default, metadata=metadata)


# === Checks ===
# Each takes the option's name and value and returns the value to store.


def label(name):
    """How an error names an option: as the CLI spells it and as Python does."""
    field = _FIELDS.get(name) or _INFERENCE_FIELDS.get(name)
    if field is None or not field.metadata["cli"]:
        return name
    return f"--{name.replace('_', '-')} / {name}"


def normalised(name, value):
    """`value` checked and normalised as the field `name` stores it (raises when invalid)."""
    return _FIELDS[name].metadata["check"](name, value)


def _is_int(value):
    from condnet.data.checks import is_int  # imported when first checked: see `_library`

    return is_int(value)


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(low):
    def check(name, value):
        if not _is_int(value):
            kind = TypeError
        elif value < low:
            kind = ValueError
        else:
            return int(value)
        raise kind(f"{label(name)} must be an int >= {low}. Received: {name}={value!r}")

    return check


def _finite_number(zero_allowed):
    """A check of a finite number > 0, or >= 0 with `zero_allowed` (inf and nan are
    refused)."""
    bound = ">= 0" if zero_allowed else "> 0"

    def check(name, value):
        if not _is_number(value):
            raise TypeError(f"{label(name)} must be a number {bound}. Received: {name}={value!r}")
        if not (math.isfinite(value) and (value > 0 or (zero_allowed and value == 0))):
            raise ValueError(
                f"{label(name)} must be a finite number {bound}. Received: {name}={value!r}"
            )
        return value

    return check


_positive_number = _finite_number(zero_allowed=False)


def _one_of(choices, optional=False):
    def check(name, value):
        if (optional and value is None) or value in choices:
            return value
        shown = [*choices, None] if optional else list(choices)
        raise ValueError(f"{label(name)} must be one of {shown}. Received: {name}={value!r}")

    return check


def _boolean(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{label(name)} must be True or False. Received: {name}={value!r}")
    return value


def _optional_text(name, value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{label(name)} must be a string or None. Received: {name}={value!r}")


def _augment(name, value):
    """A policy name; True / False (the old switch) mean "auto" / "none"."""
    if isinstance(value, bool):
        return "auto" if value else "none"
    return _one_of(AUGMENT_POLICIES)(name, value)


def _text(name, value):
    if not isinstance(value, str) or not value:
        raise TypeError(f"{label(name)} must be a non-empty string. Received: {name}={value!r}")
    return value


def _hierarchy(name, value):
    """None, "auto", a path (kept as a string) or a tree (kept as its dict)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Hierarchy):
        return value.to_dict()
    if isinstance(value, dict):
        Hierarchy(value)  # raises on a malformed tree
        return value
    raise TypeError(
        f"{label(name)} must be a Hierarchy, a dict, the path of a JSON/YAML file, 'auto' or "
        f"None. Received: {name} of type {type(value).__name__}"
    )


def auto_or_int(text):
    """`--image-size` and `--head-units` on the command line: `auto` or an int."""
    return text if text == "auto" else int(text)


def auto_or_float(text):
    """`--learning-rate` on the command line: `auto` or a number."""
    return text if text == "auto" else float(text)


def _auto_or(check):
    """A check that keeps `"auto"` and gives any other value to `check`."""

    def checked(name, value):
        return value if value == "auto" else check(name, value)

    return checked


def _library(module, function):
    """A check by the library's own validator, `module.function(value)`, which returns the
    value to store; its error names the flag first. The module is imported when a value
    is first checked: `condnet --help` lists the options without importing Keras."""

    def check(name, value):
        validator = getattr(importlib.import_module(module), function)
        try:
            return validator(value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{label(name)}: {error}") from None

    return check


def _image_size(name, value):
    """`"auto"`, or a size `condnet.data.checks.check_image_size` accepts: an int, or a
    (height, width) pair (stored as a tuple); a list of one side is that square."""
    if value == "auto":
        return value
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]  # [64] is 64
    height, width = _library("condnet.data.checks", "check_image_size")(name, value)
    return height if _is_int(value) else (height, width)


def _filters(name, value):
    if not (
        isinstance(value, list | tuple) and value and all(_is_int(f) and f >= 1 for f in value)
    ):
        raise ValueError(
            f"{label(name)} must be a non-empty sequence of ints >= 1, one per small_cnn "
            f"block, e.g. (32, 64, 128, 256). Received: {name}={value!r}"
        )
    return tuple(value)


def _fraction(name, value):
    """A number in [0, 1): a share of the data, a dropout rate."""
    if not _is_number(value):
        raise TypeError(f"{label(name)} must be a float in [0, 1). Received: {name}={value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{label(name)} must be in [0, 1). Received: {name}={value!r}")
    return value


def _split(name, value):
    """None, or a pair (train rows, validation rows) of disjoint row indices, as tuples."""
    if value is None:
        return value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TypeError(
            f"{name} must be a pair (train_indices, validation_indices). Received: "
            f"{type(value).__name__} {value!r:.100}"
        )
    rows = tuple(tuple(_row(row) for row in part) for part in value)
    shared = set(rows[0]) & set(rows[1])
    if not rows[0] or shared:
        raise ValueError(
            f"{name} needs at least one training row and no row in both parts. Received: "
            f"{len(rows[0])} training rows, {len(shared)} shared"
        )
    return rows


def _row(value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise TypeError(f"split indices must be ints >= 0. Received: {value!r}")
    return int(value)


# === Options ===


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """Every option of the training recipe (`condnet.train`, `condnet train`).

    One frozen object: each field is checked when the object is made (before
    any file is read or written), `condnet train --help` is generated from
    the fields (names in kebab-case, defaults, help texts, choices), and a
    run's `config.json` stores `to_config()`, which `from_config` reads back.
    `dataclasses.replace(options, epochs=20)` makes a changed copy.

    The fields, their defaults and meanings are listed by
    `condnet train --help`; `split` is Python-only (see `train`).

    Example:

    ```python
    options = TrainingOptions(image_size=48, epochs=5, routing="hard")
    condnet.train("demo/data/train", "runs/shapes", options)
    ```
    """

    hierarchy: object = _option(
        None,
        "JSON/YAML file mapping group -> classes (for flat folders), or 'auto' to discover "
        "the groups from the classes a flat classifier confuses (written to "
        "RUN_DIR/hierarchy.discovered.json, to edit and reuse)",
        _hierarchy,
        metavar="FILE",
        type=str,
    )
    modality: str = _option(
        "auto",
        "what DATA_DIR's class folders hold: image files, or text documents (any file whose "
        "content is text, with or without an extension; empty and binary files are skipped); "
        "auto = text when more of its files are documents than images",
        _one_of(MODALITIES),
        choices=MODALITIES,
    )
    discovery_groups: int = _option(
        2, "number of groups --hierarchy auto discovers", _int_at_least(2), metavar="N"
    )
    routing: str = _option(
        "soft",
        "routing while training and at inference: soft mixes the experts by the gate's "
        "probabilities, hard runs the gate's top group, gumbel samples a group while "
        "training, teacher routes by the true group while training",
        _one_of(ROUTINGS),
        choices=ROUTINGS,
    )
    strategy: str = _option(
        "joint",
        "joint: one model, one loss; staged: gate, then experts, then joint",
        _one_of(STRATEGIES),
        choices=STRATEGIES,
    )
    backbone: str = _option(
        "small_cnn",
        "small_cnn (from scratch) or a keras.applications base: MobileNetV3Small, "
        "MobileNetV3Large, EfficientNetB0-B3, ResNet50, ResNet101, VGG16, VGG19; a keras-hub "
        "preset (name, kaggle:// or hf:// handle, or a local preset folder) or a .keras / .h5 "
        "model file; documents with --text-trunk hub: a keras-hub text backbone preset, read "
        "with its own tokenizer",
        _text,
        metavar="NAME",
    )
    weights: object = _option(
        None,
        "pretrained backbone weights: 'imagenet' or a weights file (default: train from scratch)",
        _optional_text,
        type=str,
        metavar="WEIGHTS",
    )
    expert_placement: str = _option(
        "auto",
        "where experts branch: branch (small_cnn only: each expert owns the last block), "
        "heads (light heads, dropout + dense, on the backbone's pooled features), taps (an "
        "earlier stage), top (shared trunk), separate (own CNNs); auto = branch for "
        "small_cnn, heads for pretrained backbones, taps for applications from scratch",
        _one_of(PLACEMENTS),
        choices=PLACEMENTS,
    )
    head_units: object = _option(
        "auto",
        "units of a ReLU layer (with dropout) before each head's classifier, 0 for none; "
        "auto = 256 on light heads (a pretrained backbone's pooled features), else 0",
        _library("condnet.vision.image_model", "check_head_units"),
        type=auto_or_int,
        metavar="UNITS",
    )
    image_size: object = _option(
        "auto",
        f"image side in pixels, at most {MAX_IMAGE_SIDE} (at least 8 for small_cnn, 32 for an "
        "application), or auto: the training "
        "images' median side, between 32 and 224 (a CNN of the same cost as one a user would "
        "write at the data's own size)",
        _image_size,
        type=auto_or_int,
        metavar="PIXELS",
    )
    color_mode: str = _option(
        "rgb", "read images as RGB or grayscale", _one_of(COLOR_MODES), choices=COLOR_MODES
    )
    cache: str = _option(
        "auto",
        "where decoded images are kept between epochs: memory, disk (a cache outside the data, "
        "--cache-dir; later runs on the same images read no image file either), none; auto = "
        "memory when the decoded set fits in 256 MiB, else disk",
        _one_of(CACHE_POLICIES),
        choices=CACHE_POLICIES,
    )
    cache_dir: object = _option(
        None,
        "folder of the disk cache (default $CONDNET_CACHE_DIR, else ~/.cache/condnet/decoded)",
        _optional_text,
        type=str,
        metavar="DIR",
    )
    text_trunk: str = _option(
        TEXT_DEFAULTS["text_trunk"],
        "documents: what reads the words before the gate and the experts: bag (their "
        "embeddings averaged, as fastText), cnn (two 1D convolutions), gru (bidirectional), "
        "transformer (one encoder block), all trained from scratch; hub: the pretrained "
        "keras-hub text backbone preset --backbone names (BERT, RoBERTa, ...), frozen, with "
        "its own tokenizer",
        _one_of(TEXT_TRUNKS),
        choices=TEXT_TRUNKS,
    )
    sequence_length: int = _option(
        TEXT_DEFAULTS["sequence_length"],
        "documents: words read from each (the rest is cut; shorter ones are padded); with "
        "--text-trunk hub, the tokenizer's tokens, its start and end tokens included",
        _int_at_least(1),
    )
    vocabulary_size: int = _option(
        TEXT_DEFAULTS["vocabulary_size"],
        "documents: the most frequent words of the training split that get an embedding of "
        "their own (the others share one)",
        _int_at_least(3),
    )
    epochs: int = _option(10, "training epochs", _int_at_least(1))
    batch_size: int = _option(32, "batch size", _int_at_least(1))
    learning_rate: object = _option(
        "auto",
        "Adam learning rate; auto = 1e-3 for images, 1e-2 for documents (the embeddings of "
        "a text trunk learn slowly at 1e-3)",
        _auto_or(_positive_number),
        type=auto_or_float,
        metavar="RATE",
    )
    lr_schedule: str = _option(
        "cosine",
        "how the learning rate falls within each phase: cosine decays it along half a "
        "cosine to about a hundredth of its start by the phase's last epoch; plateau halves "
        "it when the validation accuracy stalls",
        _one_of(LR_SCHEDULES),
        choices=LR_SCHEDULES,
    )
    validation_split: float = _option(
        0.2,
        "share of each class held out for validation, in [0, 1)",
        _fraction,
    )
    seed: int = _option(
        1337, "random seed of the split, the weights and the shuffles", _int_at_least(0)
    )
    augment: str = _option(
        "auto",
        "augmentation policy: none; light (small shifts); standard / strong (flips, rotation, "
        "zoom, shifts, contrast); auto = light, or none under 32 px: no flips or rotations, "
        "which would turn direction-dependent classes into each other; on a pretrained "
        "backbone none, unless a probe of the validation split finds that light shifts "
        "surely cost its features 2 points, two standard errors down (--no-augment = none)",
        _augment,
        choices=AUGMENT_POLICIES,
    )
    flip: bool = _option(
        True,
        "keep the policy's horizontal flips (standard, strong); --no-flip drops them for "
        "data whose class depends on direction (signs, digits, text)",
        _boolean,
    )
    rotation: bool = _option(
        True,
        "keep the policy's rotations (standard, strong); --no-rotation drops them for "
        "data whose class depends on orientation",
        _boolean,
    )
    filters: tuple = _option(
        SMALL_CNN_FILTERS,
        "filters of each small_cnn block (two convolutions each)",
        _filters,
        type=int,
        nargs="+",
        metavar="N",
    )
    fine_tune_epochs: int = _option(
        0, "epochs of fine-tuning the unfrozen top of a pretrained backbone", _int_at_least(0)
    )
    fine_tune_layers: int = _option(
        20, "top backbone layers to unfreeze when fine-tuning", _int_at_least(0)
    )
    fine_tune_learning_rate: float = _option(
        1e-5, "learning rate when fine-tuning", _positive_number
    )
    loss_schedule: object = _option(
        None,
        "change loss weights over epochs: coarse_to_fine weights the gate first, then the classes",
        _one_of(SCHEDULES, optional=True),
        choices=SCHEDULES,
        type=str,
    )
    expert_dropout: float = _option(
        0.3,
        "dropout before each expert's classifier (the gate's is 0.3)",
        _fraction,
    )
    outlier_loss_weight: float = _option(
        0.5,
        "outlier exposure: weight (relative to the expert loss) of teaching each expert to "
        "answer evenly on other groups' images, so that it can flag a class it does not "
        "know; 0 turns it off",
        _finite_number(zero_allowed=True),
    )
    upcycle_epochs: int = _option(
        0,
        "first train a flat model (the trunk and one expert's head over every class) for "
        "this many epochs and start every expert as a copy of it (sparse upcycling); the "
        "flat baseline then trains this many epochs more too",
        _int_at_least(0),
    )
    patience: int = _option(
        5,
        "epochs without validation improvement before stopping (under the cosine "
        "schedule, counted over the second half of each phase only)",
        _int_at_least(1),
    )
    tensorboard: bool = _option(
        True,
        "write TensorBoard logs (per-epoch scalars, the options in the HParams view) to "
        "RUN_DIR/logs when TensorFlow's tensorboard package is installed",
        _boolean,
    )
    dispatch: str = _option(
        "dense",
        "how hard routing runs while training: dense computes every expert on every row, "
        "capacity runs each expert on a fixed-size buffer of its own rows",
        _one_of(DISPATCHES),
        choices=DISPATCHES,
    )
    capacity_factor: float = _option(
        1.25,
        "with --dispatch capacity: buffer size per expert as a multiple of batch / groups",
        _library(_MODEL, "check_capacity_factor"),
    )
    confidence_threshold: object = _option(
        None,
        "at inference with a hard routing, rows whose top gate probability is below it mix "
        "their two most likely experts, in (0, 1] (none: never hedge)",
        _library(_MODEL, "check_confidence_threshold"),
        type=float,
    )
    temperature: float = _option(
        1.0, "Gumbel-softmax temperature", _library(_MODEL, "check_temperature")
    )
    backbone_output: object = _option(
        None,
        "layer of a backbone model file to end the trunk at (default: before its global "
        "pooling / classifier)",
        _optional_text,
        type=str,
        metavar="LAYER",
    )
    preprocess: object = _option(
        None,
        "what a backbone model file expects of [0, 255] images: none, unit ([0, 1]), "
        "symmetric ([-1, 1]), caffe, torch (ImageNet mean/std)",
        _one_of(PREPROCESS_MODES, optional=True),
        choices=PREPROCESS_MODES,
        type=str,
    )
    baseline: bool = _option(
        True,
        "also train the flat baseline (the same trunk, split, epochs and augmentation, one "
        "head over every class at the routed MACs per image) and compare it in the report",
        _boolean,
    )
    report: bool = _option(
        True,
        "write report.md / report.html (plots, the gallery of mistakes, explanation maps); "
        "without it the run writes metrics.json only. Tune trials and cross-validation folds "
        "go without (the search writes its best trial's)",
        _boolean,
    )
    distribute: str = _option(
        "auto",
        "data-parallel: keras.distribution.DataParallel over every local device (JAX) or "
        "tf.distribute.MirroredStrategy over the local GPUs (TensorFlow); none: one device; "
        "auto = data-parallel when there is more than one device, else none",
        _one_of(DISTRIBUTE),
        choices=DISTRIBUTE,
    )
    precision: str = _option(
        "auto",
        "Keras dtype policy: float32, or mixed_bfloat16 / mixed_float16 (weights in float32, "
        "layers compute in 16 bits; the heads' softmax, routing and losses stay float32; "
        "mixed_float16 scales the loss); auto = mixed_bfloat16 on a TPU or a GPU of compute "
        "capability 8.0 or newer, mixed_float16 on an older GPU, float32 on a CPU (most CPUs "
        "emulate bfloat16 slowly); the run's config.json stores the policy auto chose",
        _one_of(PRECISIONS),
        choices=PRECISIONS,
    )
    split: object = _option(None, "(train rows, validation rows) of the folder", _split, cli=False)

    def __post_init__(self):
        # Normalising (Path -> str, list -> tuple, Hierarchy -> dict) is the one write, done
        # once here; the object is frozen afterwards.
        for field in dataclasses.fields(self):
            value = field.metadata["check"](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        _check_combinations(self)

    # === Config ===

    def to_config(self):
        """A JSON-ready dict of every field (what config.json stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        """The options of a `to_config()` dict (a run's config.json "options").

        The folder names config.json stores beside the options (`RUN_KEYS`)
        are skipped; any other unknown key is an error.
        """
        unknown = sorted(set(config) - set(_FIELDS) - set(RUN_KEYS))
        if unknown:
            raise ValueError(
                f"The options name unknown fields {unknown}; the known ones are "
                f"{sorted(_FIELDS)}. Received: {unknown}"
            )
        return cls(**{name: value for name, value in config.items() if name in _FIELDS})

    @classmethod
    def fields_of(cls, kwargs):
        """Split keyword arguments into option fields and the rest: `(fields, others)`."""
        fields = {k: v for k, v in kwargs.items() if k in _FIELDS}
        return fields, {k: v for k, v in kwargs.items() if k not in _FIELDS}


_FIELDS = {field.name: field for field in dataclasses.fields(TrainingOptions)}

# The topics `condnet train --help` lists the options under, in this order (each
# option the CLI shows is in exactly one; a test checks it).
HELP_GROUPS = {
    "data": (
        "modality",
        "hierarchy",
        "discovery_groups",
        "image_size",
        "color_mode",
        "validation_split",
        "cache",
        "cache_dir",
    ),
    "model": ("backbone", "expert_placement", "head_units", "filters", "expert_dropout"),
    "documents": ("text_trunk", "sequence_length", "vocabulary_size"),
    "routing": ("routing", "temperature", "confidence_threshold", "dispatch", "capacity_factor"),
    "training": (
        "strategy",
        "epochs",
        "batch_size",
        "learning_rate",
        "lr_schedule",
        "patience",
        "seed",
        "loss_schedule",
        "outlier_loss_weight",
        "upcycle_epochs",
    ),
    "augmentation": ("augment", "flip", "rotation"),
    "pretrained backbones": (
        "weights",
        "backbone_output",
        "preprocess",
        "fine_tune_epochs",
        "fine_tune_layers",
        "fine_tune_learning_rate",
    ),
    "comparison and logs": ("baseline", "report", "tensorboard"),
    "devices": ("distribute", "precision"),
}


# The options a run of the other modality does not read: given to it, they are refused.
IMAGE_OPTIONS = (
    "backbone",
    "weights",
    "expert_placement",
    "head_units",
    "image_size",
    "color_mode",
    "cache",
    "cache_dir",
    "augment",
    "flip",
    "rotation",
    "filters",
    "expert_dropout",  # the text heads share one dropout with the gate
    "upcycle_epochs",
    "fine_tune_epochs",
    "fine_tune_layers",
    "fine_tune_learning_rate",
    "backbone_output",
    "preprocess",
)
TEXT_OPTIONS = tuple(TEXT_DEFAULTS)
# What a text run on a keras-hub backbone (--text-trunk hub) reads of the image options:
# the preset, and the fine-tuning of its top layers.
HUB_TEXT_OPTIONS = ("backbone", "fine_tune_epochs", "fine_tune_layers", "fine_tune_learning_rate")


def _check_modality(options):
    """A run of one modality refuses the options of the other that were changed from
    their defaults (it would ignore them)."""
    if options.modality == "auto":
        return
    text = options.modality == "text"
    hub = text and options.text_trunk == HUB_TEXT_TRUNK
    names = IMAGE_OPTIONS if text else TEXT_OPTIONS
    if hub:
        names = [name for name in names if name not in HUB_TEXT_OPTIONS] + ["vocabulary_size"]
    given = {name: getattr(options, name) for name in names}
    given = {name: value for name, value in given.items() if value != _FIELDS[name].default}
    if given:
        shown = ", ".join(label(name) for name in given)
        received = ", ".join(f"{name}={value!r}" for name, value in given.items())
        if hub:
            raise ValueError(
                f"{shown} do not apply to --text-trunk hub, which reads documents with a "
                "pretrained keras-hub backbone and its own tokenizer (its vocabulary is the "
                "preset's). Leave them out (a hub run's own options are --backbone PRESET, "
                "--sequence-length and the --fine-tune-* options). Received: " + received
            )
        if text:
            raise ValueError(
                f"{shown} only apply to images, and this run reads documents "
                "(modality='text'; auto picks it for a folder of text files). Leave them out "
                "(a text run's own options are --text-trunk, --sequence-length and "
                "--vocabulary-size; --backbone names the preset of --text-trunk hub), or "
                f"pass --modality image. Received: {received}"
            )
        raise ValueError(
            f"{shown} only apply to documents, and this run reads images "
            "(modality='image'; auto picks it for a folder of images). Leave them out, or "
            f"pass --modality text for a folder of text files. Received: {received}"
        )
    if hub and options.backbone == _FIELDS["backbone"].default:
        raise ValueError(
            "--text-trunk / text_trunk='hub' reads documents with a pretrained keras-hub text "
            "backbone: name its preset with --backbone / backbone (a name such as "
            "bert_tiny_en_uncased, a kaggle:// or hf:// handle, or a local preset folder). "
            f"Received: text_trunk='hub', backbone={options.backbone!r}"
        )
    if text and options.hierarchy == "auto":
        raise ValueError(
            "--hierarchy auto discovers groups with a flat image classifier, and this run "
            "reads documents (modality='text'). Pass --hierarchy FILE mapping each group to "
            "its classes, or lay the folder out as DATA_DIR/<group>/<class>/*. Received: "
            "hierarchy='auto', modality='text'"
        )


def _check_combinations(options):
    _check_modality(options)
    if options.strategy == "staged" and options.epochs < STAGED_MIN_EPOCHS:
        raise ValueError(
            "--strategy / strategy='staged' trains the gate, then the experts, then both, at "
            "least one epoch for each of the first two phases, so it needs --epochs / epochs "
            f"of {STAGED_MIN_EPOCHS} or more. Pass more epochs or --strategy joint. Received: "
            f"strategy='staged', epochs={options.epochs}"
        )
    if options.expert_placement != "auto":  # auto resolves from the backbone, when built
        from condnet.vision.image_model import resolve_placement

        resolve_placement(options.expert_placement, options.backbone, options.weights)
    if options.backbone == "small_cnn" and options.weights is not None:
        raise ValueError(
            "small_cnn trains from scratch and takes no pretrained --weights / weights. Pick "
            "an application --backbone (e.g. MobileNetV3Small) or leave out the weights. "
            f"Received: weights={options.weights!r}"
        )
    from condnet.models.conditional_model import check_dispatch

    check_dispatch(options.dispatch, options.routing, options.confidence_threshold)
    default_weight = _FIELDS["outlier_loss_weight"].default
    if options.dispatch == "capacity" and options.outlier_loss_weight not in (0, default_weight):
        raise ValueError(
            "Outlier exposure trains every expert on the other groups' rows, which "
            "--dispatch / dispatch='capacity' does not run them on, so it is left out there. "
            "Use --dispatch dense, or leave --outlier-loss-weight at its default. Received: "
            f"dispatch='capacity', outlier_loss_weight={options.outlier_loss_weight!r}"
        )
    if options.split is not None and options.hierarchy == "auto":
        raise ValueError(
            "split indices refer to the rows of a known hierarchy, so they cannot be "
            "combined with hierarchy='auto'. Discover the hierarchy first "
            "(condnet.evaluation.discovery.discover_from_folder), save it, and pass its file. "
            "Received: hierarchy='auto' with split"
        )


# === Inference options ===


def parse_thresholds(pairs, key="LEVEL", example="group=0.8 class=0.9"):
    """`--thresholds group=0.8 class=0.9` as `{"group": 0.8, "class": 0.9}` (`never`:
    None), or None when not given. The levels (or the groups, `key="GROUP"`) are checked
    against the run's hierarchy."""
    if pairs is None:
        return None
    thresholds = {}
    for pair in pairs:
        level, equals, value = pair.partition("=")
        number = _probability(value)
        if not equals or not level or level in thresholds or number is False:
            raise ValueError(
                f"--thresholds takes one {key}=P per {key.lower()} of the hierarchy, e.g. "
                f"{example} (P a probability, or never). Received: --thresholds {' '.join(pairs)}"
            )
        thresholds[level] = number
    return thresholds


def _probability(text):
    """A threshold's text as a float, None for `never`, False when it is neither."""
    if text.strip().lower() == "never":
        return None
    try:
        return float(text)
    except ValueError:
        return False


def _thresholds(name, value):
    """None, `LEVEL=P` words as the command line gives them, or a dict level -> P (None:
    never); stored as the dict."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, list | tuple) and all(isinstance(pair, str) for pair in value):
        return parse_thresholds(value)
    raise TypeError(
        f"{label(name)} must be LEVEL=P words or a dict level -> probability. Received: "
        f"{name}={value!r}"
    )


MODEL_HELP = (
    "model of the run to use: model.keras (default), model.calibrated.keras (after `condnet "
    "calibrate`), baseline.keras (the run's flat baseline) or the path of a .keras file"
)
# What `--routing`'s help says when a command keeps the routing the run's model was saved with.
SAVED_ROUTING = "the model saved in the run"


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """The options of the commands that use a trained run: evaluate, predict, export, serve.

    Each field is checked when the object is made (before the model is
    loaded), and each command's flags are generated from the fields it takes
    (`condnet.runs.cli.common.add_inference_flags`): a flag is spelled once,
    here, whichever commands share it. A command may change a field's default
    (`evaluate` routes hard) and word its help for what it does with the value.

    Args:
        routing: str or None. `"hard"` runs only the chosen expert (what a
            deployed model does), `"soft"` every expert, mixed by the gate.
            Defaults to None: the routing the run's model was saved with.
        model: str or None. The run's model file: `model.keras`,
            `model.calibrated.keras`, `baseline.keras` or a path. Defaults to
            None (`model.keras`).
        batch_size: int. Inputs per model call. Defaults to 64.
        quiet: bool. No progress lines on standard error. Defaults to False.
        output: str or None. A file to write the results to. Defaults to None.
        back_off: bool. Also answer with the deepest node the model is sure
            of, with the thresholds in the run's `backoff.json`. Defaults to
            False.
        thresholds: dict or None. Back-off thresholds per level instead of the
            run's (`{"group": 0.8, "class": None}`; None: never), or their
            `LEVEL=P` words. Defaults to None.
        unknown: bool. Also say whether the chosen expert knows none of its
            classes, with the thresholds in the run's `unknown.json`. Defaults
            to False.

    Example:

    ```python
    options = InferenceOptions(routing="soft", batch_size=128)
    ```
    """

    routing: object = _option(
        None,
        "hard: only the chosen expert runs (what a deployed model does); soft: every expert, "
        "mixed by the gate (default: {default})",
        _one_of(INFERENCE_ROUTINGS, optional=True),
        choices=INFERENCE_ROUTINGS,
    )
    model: object = _option(None, MODEL_HELP, _optional_text, metavar="FILE")
    batch_size: int = _option(
        64, "images per batch (default {default})", _int_at_least(1), type=int
    )
    quiet: bool = _option(
        False, "no progress lines (they go to standard error)", _boolean, action="store_true"
    )
    output: object = _option(None, "write the results to FILE", _optional_text, metavar="FILE")
    back_off: bool = _option(
        False,
        "also answer with the deepest node the model is sure of (the class, else the group, "
        "else 'unsure'), with the thresholds in RUN_DIR/backoff.json",
        _boolean,
        action="store_true",
    )
    thresholds: object = _option(
        None,
        "back off with these thresholds instead, one per level, e.g. group=0.8 class=0.9 "
        "(never: a level that never answers)",
        _thresholds,
        nargs="+",
        metavar="LEVEL=P",
    )
    unknown: bool = _option(
        False,
        "also say whether the chosen expert knows none of its classes (unknown: true, e.g. a "
        "dog of a breed it never saw), with the thresholds in RUN_DIR/unknown.json",
        _boolean,
        action="store_true",
    )

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = field.metadata["check"](field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)


_INFERENCE_FIELDS = {field.name: field for field in dataclasses.fields(InferenceOptions)}
