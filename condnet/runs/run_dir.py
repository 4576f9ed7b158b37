"""A finished run directory: evaluate it on a folder, predict images, describe its parts."""

import json
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np

from condnet.data.folders import IMAGE_EXTENSIONS, ImageFolder, scan_directory
from condnet.evaluation.calibration import calibrate
from condnet.evaluation.cost import count_macs
from condnet.evaluation.evaluate import (
    error_row,
    evaluate_model,
    predict_batch,
    prediction_row,
    within_group_of,
)
from condnet.evaluation.progress import Progress
from condnet.runs.checkpoint import (
    BASELINE,
    BEST,
    CHECKPOINTS,
    METRICS,
    save_model_atomic,
    write_atomic,
)

CONFIG = "config.json"


INFERENCE_ROUTINGS = ("hard", "soft")


def load_run(run_dir, model_file=None, routing=None):
    """(model, config) of a run directory written by `condnet train`.

    `model_file` picks another model of the run (`model.calibrated.keras`)
    or any `.keras` file (a path); `routing` (`"hard"`: only the chosen
    expert runs; `"soft"`: the mixture of every expert) overrides the
    model's own routing at inference.

    `config.json` must be UTF-8 JSON with an `"options"` object (holding at
    least `image_size` and `color_mode`), and `model.keras` a complete Keras
    archive; anything else is a `ValueError` that names the file and says
    what to do.
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
            "model.calibrated.keras (after `condnet calibrate`) or the path of a .keras file. "
            f"Received: model={model_file!r}"
        )
    if not run_dir.is_dir() or not model_path.is_file() or not config_path.is_file():
        raise ValueError(
            f"{str(run_dir)!r} is not a finished condnet run: it needs {BEST} and "
            f"{CONFIG} (written by `condnet train --out RUN_DIR`). Received: "
            f"run_dir={str(run_dir)!r}"
        )
    config = _read_config(config_path)
    model = _load_model(model_path)
    if routing is not None:
        model.routing = routing
    return model, config


def _model_path(run_dir, model_file):
    if model_file is None:
        return run_dir / BEST
    path = Path(model_file)
    return path if path.is_absolute() or path.parent != Path(".") else run_dir / path


def _read_config(path):
    try:
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except UnicodeDecodeError as error:
        raise ValueError(_bad_config(path, f"it is not UTF-8 text ({error})")) from None
    except RecursionError:
        raise ValueError(_bad_config(path, "it nests too deeply to read")) from None
    except ValueError as error:  # JSONDecodeError, or an integer too long to read
        raise ValueError(_bad_config(path, f"it is not valid JSON ({error})")) from None
    except OSError as error:
        raise ValueError(_bad_config(path, f"it cannot be read ({error})")) from None
    options = config.get("options") if isinstance(config, dict) else None
    if not isinstance(options, dict):
        raise ValueError(_bad_config(path, 'it has no "options" object'))
    missing = [key for key in ("image_size", "color_mode") if key not in options]
    if missing:
        raise ValueError(_bad_config(path, f'its "options" lack {missing}'))
    return config


def _bad_config(path, problem):
    return (
        f"The run's {CONFIG} cannot be used: {problem}. `condnet train --out RUN_DIR` "
        f"writes it with the run's options; re-train the run or restore the file. "
        f"Received: path={str(path)!r}"
    )


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
    if "config.json" not in names:
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
    chosen expert runs); the other routing's accuracy is reported beside them
    (`mixture` or `hard_routed`), and so is the run's flat baseline when it
    has one (`baseline`), on the same images. `progress=True` reports each
    pass on standard error.
    """
    from condnet.evaluation.report import baseline_verdict, gap_sources, write_report

    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    data = folder_for(model, config, data_dir, batch_size)
    label = _labeller(progress)
    metrics, predictions = evaluate_model(
        model, data, return_predictions=True, progress=label(f"{model.routing} routing")
    )
    metrics["inference_routing"] = model.routing
    other = "soft" if model.routing != "soft" else "hard"
    model.routing = other
    other_metrics, other_predictions = evaluate_model(
        model, data, return_predictions=True, progress=label(f"{other} routing")
    )
    metrics["mixture" if other == "soft" else "hard_routed"] = {
        "accuracy": other_metrics["accuracy"]
    }
    soft = other_predictions if other == "soft" else predictions
    within = within_group_of(model.hierarchy, soft)
    comparison = _baseline_on(
        run_dir,
        data,
        model.hierarchy,
        {**metrics, "within_group_accuracy": within},
        label("flat baseline"),
    )
    if comparison is not None:
        if metrics["inference_routing"] == "hard":
            _add_training_costs(run_dir, comparison)
        comparison["verdict"] = baseline_verdict(comparison["conditional"], comparison["flat"])
        comparison["where"] = gap_sources(comparison["conditional"], comparison["flat"])
        metrics["baseline"] = comparison
    report_dir = Path(report_dir or Path(run_dir) / "evaluation")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / METRICS).write_text(json.dumps(metrics, indent=1))
    write_report(
        report_dir,
        model.hierarchy,
        metrics,
        title=f"{Path(run_dir).name} evaluated on {data_dir}",
        header={
            "data": f"{data_dir} ({metrics['num_samples']} images scored)",
            "routing": metrics["inference_routing"],
        },
        baseline=comparison,
    )
    return metrics


def _labeller(progress):
    return (lambda label: label) if progress else (lambda label: None)


def _baseline_on(run_dir, data, hierarchy, metrics, progress=None):
    """The run's flat baseline scored on `data`, beside the conditional model, or None."""
    path = Path(run_dir) / BASELINE
    if not path.is_file():
        return None
    flat = _load_model(path)
    scores, predictions = evaluate_model(
        flat, data, hierarchy=hierarchy, return_predictions=True, progress=progress
    )
    scores["within_group_accuracy"] = within_group_of(hierarchy, predictions)
    keys = ("accuracy", "group_accuracy", "within_group_accuracy", "hierarchical_f1")
    return {
        "conditional": {key: metrics[key] for key in keys},
        "flat": {key: scores[key] for key in keys},
        "model": BASELINE,
    }


def _add_training_costs(run_dir, comparison):
    """MACs per image and images/s of both models, as `condnet train` measured them for the
    hard-routed model (they do not depend on the images scored); nothing if it did not."""
    path = Path(run_dir) / METRICS
    trained = json.loads(path.read_text()).get("baseline", {}) if path.is_file() else {}
    for side in ("conditional", "flat"):
        for key in ("macs_per_image", "images_per_second"):
            if key in trained.get(side, {}):
                comparison[side][key] = trained[side][key]


def predict_paths(run_dir, inputs, batch_size=64, routing=None, model_file=None, progress=False):
    """Predict images (files or folders of images); one dict per image, in order.

    `routing` and `model_file` as in `load_run` (the model's own routing,
    hard for a run trained by `condnet train`, and model.keras by default).

    An image that cannot be decoded gets the row `{"path": ..., "error":
    "cannot decode: <reason>"}` instead of a prediction; no other image's
    prediction ever stands in for it. `progress=True` reports the batches on
    standard error.
    """
    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    paths = _image_paths(inputs)
    hierarchy = model.hierarchy
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
        decoded = iter(range(int(valid.sum())))
        for row, error in zip(data.batch_rows(index), errors):
            path = data.paths[row]
            if error is None:
                results.append(prediction_row(hierarchy, path, outputs, next(decoded)))
            else:
                results.append(error_row(path, error))
    shown.close(f", {len(results)} images")
    return results


def input_shape_of(config):
    """`(None, height, width, channels)` of the images a run's model takes."""
    size = config["options"]["image_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels = 1 if config["options"]["color_mode"] == "grayscale" else 3
    return (None, *size, channels)


def run_info(run_dir):
    """Hierarchy, parameters per part and multiply-accumulates per image for each route."""
    return model_info(*load_run(run_dir))


def model_info(model, config):
    """`run_info` of a loaded run's model and config."""
    shape = input_shape_of(config)
    taps = model._tap_shapes(shape)
    parts = {
        "trunk": model.trunk,
        "gate": model.gate,
        **{f"expert {g}": e for g, e in model.experts.items()},
    }
    params = {
        name: int(part.count_params()) if part is not None else 0 for name, part in parts.items()
    }
    macs = {
        "trunk": count_macs(model.trunk, shape[1:]) if model.trunk is not None else 0,
        "gate": count_macs(model.gate, taps[model.gate_tap][1:]),
    }
    for group, expert in model.experts.items():
        tap_shape = taps[model.expert_taps[group]][1:]
        macs[f"expert {group}"] = count_macs(expert, tap_shape) if expert is not None else 0
    shared = macs["trunk"] + macs["gate"]
    routes = {g: shared + macs[f"expert {g}"] for g in model.hierarchy.groups}
    from condnet.vision.image_model import taps_of

    return {
        "hierarchy": model.hierarchy.to_dict(),
        "routing": model.routing,
        "taps": taps_of(model),
        "parameters": params,
        "macs": macs,
        "macs_per_route": routes,
        "macs_all_experts": shared + sum(macs[f"expert {g}"] for g in model.hierarchy.groups),
    }


CALIBRATED = "model.calibrated.keras"
CALIBRATION_REPORT = "calibration.json"


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
    from condnet.runs.recipe import load_data

    model, config = load_run(run_dir)
    _, validation = load_data(config["options"])
    if validation is None:
        raise ValueError(
            f"The run {str(run_dir)!r} has no validation split (validation_split=0), and "
            "temperatures must be fitted on images the model did not train on. Train "
            "with --validation-split 0.2 (or more)."
        )
    if progress:
        print(
            f"Fitting the gate and expert temperatures on {validation.num_samples} validation "
            "images ...",
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
    """An ImageFolder of `data_dir` labelled with the run's own hierarchy."""
    hierarchy = model.hierarchy
    try:
        found, paths, labels = scan_directory(data_dir, hierarchy)
    except ValueError as flat_error:
        try:
            found, paths, labels = scan_directory(data_dir)
        except ValueError:
            raise flat_error from None
        if found != hierarchy:
            raise ValueError(
                f"The folders of {str(data_dir)!r} describe the hierarchy {found.to_dict()}, "
                f"but the run was trained on {hierarchy.to_dict()}. Evaluate on folders with "
                "the run's groups and classes."
            ) from None
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
