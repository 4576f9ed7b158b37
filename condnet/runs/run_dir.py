"""A finished run directory: evaluate it on a folder, predict images, describe its parts."""

import json
from pathlib import Path

import keras
import numpy as np

from condnet.data.folders import IMAGE_EXTENSIONS, ImageFolder, scan_directory
from condnet.evaluation.calibration import calibrate
from condnet.evaluation.cost import count_macs
from condnet.evaluation.evaluate import evaluate_model, predict_batch
from condnet.runs.checkpoint import BEST, save_model_atomic, write_atomic


def load_run(run_dir):
    """(model, config) of a run directory written by `condnet train`."""
    run_dir = Path(run_dir)
    model_path, config_path = run_dir / BEST, run_dir / "config.json"
    if not run_dir.is_dir() or not model_path.is_file() or not config_path.is_file():
        raise ValueError(
            f"{str(run_dir)!r} is not a finished condnet run: it needs {BEST} and "
            "config.json (written by `condnet train --out RUN_DIR`)."
        )
    return keras.models.load_model(model_path), json.loads(config_path.read_text())


def evaluate_run(run_dir, data_dir, report_dir=None, batch_size=64):
    """Evaluate a run on another folder (e.g. a test split) and write a report there."""
    from condnet.evaluation.report import write_report

    model, config = load_run(run_dir)
    data = _folder_for(model, config, data_dir, batch_size)
    metrics = evaluate_model(model, data)
    report_dir = Path(report_dir or Path(run_dir) / "evaluation")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_report(report_dir, model.hierarchy, metrics, title=f"condnet evaluation on {data_dir}")
    return metrics


def predict_paths(run_dir, inputs, batch_size=64):
    """Predict images (files or folders of images); one dict per image."""
    model, config = load_run(run_dir)
    paths = _image_paths(inputs)
    hierarchy = model.hierarchy
    data = ImageFolder(
        paths, np.zeros(len(paths), "int32"), hierarchy, **_image_options(config, batch_size)
    )
    results = []
    for index in range(len(data)):
        images, _ = data[index][:2]
        outputs = predict_batch(model, images)
        start = index * data.batch_size
        for row in range(len(images)):
            results.append(_prediction(hierarchy, paths[start + row], outputs, row))
    return results


def run_info(run_dir):
    """Hierarchy, parameters per part and multiply-accumulates per image for each route."""
    model, config = load_run(run_dir)
    size = config["options"]["image_size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels = 1 if config["options"]["color_mode"] == "grayscale" else 3
    shape = (None, *size, channels)
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
    return {
        "hierarchy": model.hierarchy.to_dict(),
        "routing": model.routing,
        "parameters": params,
        "macs": macs,
        "macs_per_route": routes,
        "macs_all_experts": shared + sum(macs[f"expert {g}"] for g in model.hierarchy.groups),
    }


CALIBRATED = "model.calibrated.keras"
CALIBRATION_REPORT = "calibration.json"


def calibrate_run(run_dir):
    """`condnet calibrate`: calibrate a run on its own validation split.

    The split is drawn again from the run's `config.json` (same folder,
    hierarchy, share or fold indices, and seed). Writes
    `RUN_DIR/model.calibrated.keras` and `RUN_DIR/calibration.json`, and
    returns the report of `calibrate`.
    """
    from condnet.runs.recipe import load_data

    model, config = load_run(run_dir)
    _, validation = load_data(config["options"])
    if validation is None:
        raise ValueError(
            f"The run {str(run_dir)!r} has no validation split (validation_split=0), and "
            "temperatures must be fitted on images the model did not train on. Train "
            "with --validation-split 0.2 (or more)."
        )
    calibrated, report = calibrate(model, validation)
    save_model_atomic(calibrated, Path(run_dir) / CALIBRATED)
    report = {**report, "model": CALIBRATED}
    write_atomic(Path(run_dir) / CALIBRATION_REPORT, json.dumps(report, indent=1) + "\n")
    return report


# === Helpers ===


def _prediction(hierarchy, path, outputs, row):
    classes = outputs["classes"][row]
    best = int(classes.argmax())
    return {
        "path": str(path),
        "group": hierarchy.group_of(hierarchy.classes[best]),
        "class": hierarchy.classes[best],
        "expert": hierarchy.groups[int(outputs["route"][row])],
        "confidence": float(classes[best]),
        "group_probabilities": {
            g: float(p) for g, p in zip(hierarchy.groups, outputs["groups"][row])
        },
    }


def _image_options(config, batch_size):
    options = config["options"]
    return {
        "image_size": options["image_size"],
        "color_mode": options["color_mode"],
        "batch_size": batch_size,
    }


def _folder_for(model, config, data_dir, batch_size):
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
        **_image_options(config, batch_size),
    )


def _image_paths(inputs):
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
        elif item.is_file():
            paths.append(item)
        else:
            raise ValueError(
                f"No such image file or folder: {str(item)!r}. Pass image files or folders "
                "of images."
            )
    if not paths:
        raise ValueError(f"No images found in {[str(i) for i in inputs]}.")
    return paths
