"""A run's configuration: its config.json, and its options resolved into its model."""

import dataclasses
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np

from condnet.choices import HUB_TEXT_TRUNK
from condnet.data.text import count_files
from condnet.models.precision import precision_scope, resolve_precision
from condnet.runs import checkpoint as ckpt
from condnet.runs.files import CONFIG, HIERARCHY
from condnet.runs.options import TrainingOptions
from condnet.runs.run_dir import refuse_extended
from condnet.text.hub_text_model import build_hub_text_model
from condnet.text.text_model import build_text_model
from condnet.training import distribute
from condnet.vision.backbones import is_pretrained
from condnet.vision.image_model import build_image_model, resolve_head_units, resolve_placement

# === config.json ===


def read_run_options(run_dir):
    """`(TrainingOptions, data_dir)` of the run in `run_dir`, from its config.json."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(
            f"There is no run to resume in {str(run_dir)!r}: {CONFIG} is missing. Start a "
            "new run without --resume."
        )
    try:
        config = json.loads(path.read_text())
        stored = config["options"]
        found = TrainingOptions.from_config(stored), stored["data_dir"]
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"{str(path)!r} is not a readable run config ({type(error).__name__}: {error}). "
            "Restore it, or start a new run with --overwrite."
        ) from None
    refuse_extended(run_dir, config, "train --resume")
    return found


def write_config(run_dir, data_dir, options, hierarchy):
    """Write the run's config.json (its data folder, every option, the hierarchy and the
    versions it ran with) and its hierarchy.json."""
    from condnet import __version__

    config = {
        "options": {"data_dir": str(data_dir), **options.to_config()},
        "hierarchy": hierarchy.to_dict(),
        "versions": {
            "condnet": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "python": platform.python_version(),
        },
    }
    ckpt.write_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=1))
    hierarchy.save(Path(run_dir) / HIERARCHY)


# === Options resolved on the data ===


def resolve_modality(options, data_dir):
    """`modality="auto"` as `"text"` when most of the first files of `data_dir` are
    documents (`condnet.data.text.count_files`), else `"image"`; the resolved options are
    checked again (a text run refuses the image options). A folder whose files are
    neither images nor documents (only empty or binary files) is refused; one without
    files is left to the image scan, which says what the layout lacks."""
    if options.modality != "auto":
        return options
    images, documents = count_files(data_dir)
    if not images and not documents and _holds_files(data_dir):
        raise ValueError(
            f"Found neither images nor text documents in {str(data_dir)!r}: its files (if "
            "any) are empty or binary. Put images (.jpg, .png, ...) or text files (UTF-8 or "
            "Latin-1, any extension) in DATA_DIR/<group>/<class>/*, or DATA_DIR/<class>/* "
            f"with --hierarchy. Received: DATA_DIR={str(data_dir)!r}"
        )
    return dataclasses.replace(options, modality="text" if documents > images else "image")


def _holds_files(folder):
    """Whether `folder` holds a file that is not hidden, at any depth."""
    visible = (path for path in Path(folder).rglob("*") if not path.name.startswith("."))
    return any(path.is_file() for path in visible)


def resolve_image_size(options, data_dir, sample=200):
    """`image_size="auto"`: the median shorter side of up to `sample` training images,
    rounded to a multiple of 8 and kept within 32..224 px."""
    if options.image_size != "auto" or options.modality == "text":
        return options
    from PIL import Image

    from condnet.data.scan import IMAGE_EXTENSIONS, outside_links_note

    files = sorted(
        path
        for path in Path(data_dir).rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )
    sides = []
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError):
            continue  # the scan reports unreadable files
    if not sides:
        raise ValueError(
            f"--image-size auto reads the size of the training images, but no image in "
            f"{str(data_dir)!r} could be opened. Pass --image-size PIXELS or check the folder."
            f"{outside_links_note(data_dir)} Received: DATA_DIR={str(data_dir)!r}"
        )
    side = int(np.clip(round(float(np.median(sides)) / 8) * 8, 32, 224))
    return dataclasses.replace(options, image_size=side)


def resolve_options(options, train_data, validation):
    """The run's options with what `"auto"` leaves open resolved on its data, and the model
    they build: `(options, model)`.

    A hierarchy file's tree is kept in the options, so the run reproduces
    (and resumes) without the file; so are the precision policy `"auto"`
    picks on this machine, the learning rate, and on images the augmentation
    policy (`--augment auto` may probe the data, `probe_augmentation`) and
    the head units.
    """
    if isinstance(options.hierarchy, str):
        options = dataclasses.replace(options, hierarchy=train_data.hierarchy.to_dict())
    # The policy "auto" picks on this machine, so that config.json (and a resume) keep it.
    options = dataclasses.replace(options, precision=resolve_precision(options.precision))
    options = dataclasses.replace(options, learning_rate=resolve_learning_rate(options))
    probe = options.augment == "auto" and probes_augmentation(options, validation)
    if options.modality != "text":
        options = dataclasses.replace(options, augment=resolve_augment(options))
        placement = resolve_placement(options.expert_placement, options.backbone, options.weights)
        options = dataclasses.replace(
            options, head_units=resolve_head_units(options.head_units, placement)
        )
    model = build_model(options, train_data)
    if probe:
        options, model = probe_augmentation(options, model, train_data, validation)
    return options, model


IMAGE_LEARNING_RATE = 1e-3
TEXT_LEARNING_RATE = 1e-2


def resolve_learning_rate(options):
    """The Adam learning rate a run uses: `"auto"` is `TEXT_LEARNING_RATE` for documents read
    by a trunk trained from scratch, `IMAGE_LEARNING_RATE` for images (a resolved modality;
    `"auto"` modality counts as images) and for documents read by a pretrained keras-hub
    backbone (`text_trunk="hub"`: heads on frozen features, as on a pretrained image
    backbone). A bag trunk's embeddings learn slowly at 1e-3 (benchmarks/RESULTS.md, "Text:
    20 Newsgroups")."""
    if options.learning_rate != "auto":
        return options.learning_rate
    if options.modality == "text" and not reads_hub(options):
        return TEXT_LEARNING_RATE
    return IMAGE_LEARNING_RATE


def reads_hub(options):
    """Whether a run reads documents with a pretrained keras-hub backbone (`text_trunk="hub"`)."""
    return options.modality == "text" and options.text_trunk == HUB_TEXT_TRUNK


def resolve_augment(options):
    """The augmentation policy a run starts from: `"auto"` on a pretrained backbone is
    `"none"`.

    Without augmentation a frozen backbone's features are computed once per
    image, so the heads train in seconds an epoch instead of running the
    backbone every epoch (benchmarks/RESULTS.md, "Pretrained backbone:
    photos20"). With a validation split of `PROBE_MIN_IMAGES` or more,
    `probe_augmentation` then turns `"light"` on when the data needs it. Other
    values are kept; on a backbone trained from scratch `"auto"` stays for
    `make_augmentation` to resolve.
    """
    if options.augment != "auto" or not is_pretrained(options.backbone, options.weights):
        return options.augment
    return "none"


# === `--augment auto`: the probe ===


# `--augment auto` on a pretrained backbone: the validation images the probe needs at
# least, and the drop in accuracy under the light policy's shifts that turns it on,
# counted at its lower bound: the measured drop less PROBE_ERRORS standard errors, since
# one random draw of validation images and shifts moves it (benchmarks/RESULTS.md,
# "Pretrained backbone: photos20").
PROBE_MIN_IMAGES = 100
PROBE_DROP = 0.02
PROBE_ERRORS = 2.0


def probes_augmentation(options, validation):
    """Whether `augment="auto"` is decided by `augmentation_probe` (a pretrained backbone,
    images, one process, and `PROBE_MIN_IMAGES` validation images to score)."""
    return (
        options.modality != "text"
        and is_pretrained(options.backbone, options.weights)
        and validation is not None
        and validation.num_samples >= PROBE_MIN_IMAGES
        and distribute.process_count() == 1
    )


def probe_augmentation(options, model, train_data, validation):
    """`augment="auto"` on a pretrained backbone: `"none"` (features computed once), unless
    the light policy's shifts surely cost its frozen features `PROBE_DROP` or more of
    their nearest-class-mean validation accuracy (the drop less `PROBE_ERRORS` standard
    errors); then `"light"`, and the model is built again with it. What the probe
    measured is kept on the training folder for the run's output."""
    from condnet.training.features import augmentation_probe
    from condnet.vision.augmentation import make_augmentation

    shifts = make_augmentation("light", image_size=options.image_size, seed=options.seed)
    started = time.perf_counter()
    found = augmentation_probe(model.trunk, train_data, validation, shifts)
    augment = "light" if _surely_drops(found) else "none"
    seconds = time.perf_counter() - started
    train_data.augmentation_probe = {**found, "augment": augment, "seconds": seconds}
    if augment == "none":
        return options, model
    options = dataclasses.replace(options, augment=augment)
    return options, build_model(options, train_data)


def _surely_drops(found):
    drop = found["clean"] - found["augmented"]
    return drop - PROBE_ERRORS * found["drop_error"] >= PROBE_DROP


def time_probe(prepared, times):
    """The probe's seconds (the backbone's pass over the images, kept for the training,
    and over the shifted validation images) count as the frozen features' pass."""
    found = getattr(prepared[1][0], "augmentation_probe", None) if prepared else None
    if found is not None:
        times.move(found["seconds"], "scan and prepare", "fit frozen features")


def probe_line(train_data):
    found = getattr(train_data, "augmentation_probe", None)
    if found is None:
        return None
    drop = 100 * (found["clean"] - found["augmented"])
    lower = drop - 100 * PROBE_ERRORS * found["drop_error"]
    verdict = {
        "none": "so the heads train on features computed once, without augmentation",
        "light": "so the run augments them (every epoch runs the backbone)",
    }[found["augment"]]
    return (
        f"--augment auto: the backbone's features classify the {found['images']} validation "
        f"images {found['clean']:.1%} right as they are and {found['augmented']:.1%} right "
        f"shifted slightly (a drop of {drop:.1f} points, at least {lower:.1f} at "
        f"{PROBE_ERRORS:g} standard errors; augmentation needs {100 * PROBE_DROP:g}), {verdict}."
    )


# === The model ===


def build_model(options, train_data):
    """The run's freshly initialised model: `build_text_model` on documents (reading the
    training folder's vectorizer), else `build_image_model`; with the run's outlier-exposure
    weight (saved in the model's config)."""
    model = _build_for(options, train_data)
    model.outlier_loss_weight = options.outlier_loss_weight
    return model


def _build_for(options, train_data):
    if options.modality != "text":
        return _build(options, train_data.hierarchy, train_data.channels)
    keras.utils.set_random_seed(options.seed)
    conditional = dict(  # the ConditionalModel's own arguments
        routing=options.routing,
        seed=options.seed,
        dispatch=options.dispatch,
        capacity_factor=options.capacity_factor,
        confidence_threshold=options.confidence_threshold,
        temperature=options.temperature,
    )
    with precision_scope(options.precision):
        if reads_hub(options):
            return build_hub_text_model(
                train_data.hierarchy,
                options.backbone,
                options.sequence_length,
                tokenizer=train_data.vectorizer,
                **conditional,
            )
        return build_text_model(
            train_data.hierarchy,
            train_data.vectorizer.vocabulary_size(),
            options.sequence_length,
            trunk=options.text_trunk,
            preprocessor=train_data.vectorizer,
            **conditional,
        )


def _build(options, hierarchy, channels):
    keras.utils.set_random_seed(options.seed)
    augmentation = None
    if options.augment != "none":
        from condnet.vision.augmentation import make_augmentation

        augmentation = make_augmentation(
            options.augment,
            # False drops the policy's flips / rotations; True keeps what the policy has.
            flip="auto" if options.flip else None,
            rotation="auto" if options.rotation else None,
            image_size=options.image_size,
            seed=options.seed,
        )
    return build_image_model(
        hierarchy,
        backbone=options.backbone,
        image_size=options.image_size,
        channels=channels,
        weights=options.weights,
        expert_placement=options.expert_placement,
        augmentation=augmentation,
        routing=options.routing,
        filters=options.filters,
        expert_dropout=options.expert_dropout,
        head_units=options.head_units,
        seed=options.seed,
        dispatch=options.dispatch,
        capacity_factor=options.capacity_factor,
        confidence_threshold=options.confidence_threshold,
        temperature=options.temperature,
        backbone_output=options.backbone_output,
        preprocess=options.preprocess,
        precision=options.precision,
    )
