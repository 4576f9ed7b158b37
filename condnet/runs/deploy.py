"""`condnet export` and `condnet serve`: a finished run where users deploy it."""

import os
from pathlib import Path

from condnet.choices import EXPORT_FORMATS as FORMATS
from condnet.runs.documents import is_text_run
from condnet.runs.files import BEST
from condnet.runs.outputs import guard, staged_file, staged_folder, training_data
from condnet.runs.run_dir import input_shape_of, load_run

DEFAULT_NAMES = {"onnx": "model.onnx", "tf_saved_model": "saved_model", "keras": BEST}


def export_run(run_dir, out=None, format="onnx", routing="hard", model_file=None, overwrite=False):
    """Export a run's model; returns the path written.

    `out` defaults to `RUN_DIR/export/model.onnx`, `.../saved_model` or
    `.../model.keras`. `onnx` and `tf_saved_model` route inside the graph
    (see `condnet.deploy.export`); `keras` copies the run's hard-routed model
    file, which routes only through condnet's own `predict`. `out` may not lie
    inside a run (except `RUN_DIR/export/`) or the run's data; an existing
    `out` is kept unless `overwrite=True`, a folder only if condnet exported it
    (`condnet.runs.outputs`), and it is replaced only once the new artifact
    is complete.

    A text run's `tf_saved_model` takes strings: its TextVectorization runs
    inside the graph. Its `onnx` is refused before anything is written
    (tf2onnx does not convert the vectorizer's string ops).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}. Received: format={format!r}")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export" / DEFAULT_NAMES[format]
    if format == "onnx" and out.suffix.lower() != ".onnx":
        raise ValueError(f"An ONNX export is one file ending in .onnx. Received: out={str(out)!r}")
    if format == "keras" and out.suffix.lower() != ".keras":
        raise ValueError(f"A Keras export is one file ending in .keras. Received: out={str(out)!r}")
    kind = "export" if format == "tf_saved_model" else "export file"
    guard(out, kind, data=training_data([run_dir]), reads=[run_dir], overwrite=overwrite)
    model, config = load_run(run_dir, model_file=model_file)
    if format != "keras":
        from condnet.deploy.export import check_export

        check_export(model, format, routing)  # before the export folder is made
    if format == "tf_saved_model":
        from condnet.deploy.export import export_model

        with staged_folder(out, "export") as partial:
            saved = partial / "saved_model"  # tf.saved_model.save writes into a new folder
            export_model(model, saved, format, input_shape_of(config)[1:], routing=routing)
            for name in os.listdir(saved):
                os.replace(saved / name, partial / name)
            saved.rmdir()
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out) as partial:
        if format == "keras":
            model.routing = routing
            model.save(partial)
        else:
            from condnet.deploy.export import export_model

            export_model(model, partial, format, input_shape_of(config)[1:], routing=routing)
    return out


# === serve ===


def serve_app(
    run_dir,
    routing="hard",
    model_file=None,
    back_off=False,
    thresholds=None,
    unknown=False,
    unknown_thresholds=None,
    **service_options,
):
    """The FastAPI app serving a run (see `condnet.deploy.serve.create_app`).

    `back_off=True` adds the back-off answer to every prediction, with the thresholds
    the run's backoff.json holds for the model file, or with `thresholds` (one per
    level), which imply it (see `condnet.runs.run_dir.predict_paths`). `unknown=True`
    likewise adds `unknown` and `unknown_score`, with the run's unknown.json or
    `unknown_thresholds` (one per group). A text run's service takes documents
    (JSON `{"text": ...}`) where an image run's takes images.
    """
    from condnet.deploy.serve import create_app
    from condnet.runs.run_dir import backoff_thresholds, model_info, unknown_thresholds_of

    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    if back_off or thresholds is not None:
        thresholds = backoff_thresholds(run_dir, model.hierarchy, model_file, thresholds)
    if unknown or unknown_thresholds is not None:
        unknown_thresholds = unknown_thresholds_of(
            run_dir, model.hierarchy, model_file, unknown_thresholds
        )
    inputs = {}  # a text run's model reads documents through its preprocessor
    if not is_text_run(config):
        _, height, width, _ = input_shape_of(config)
        inputs = {"image_size": (height, width), "color_mode": config["options"]["color_mode"]}
    info = {}
    if hasattr(model, "gate"):  # a conditional model (an ensemble has no single route)
        described = model_info(model, config).items()
        info = {k: v for k, v in described if k not in ("hierarchy", "routing")}
    return create_app(
        model,
        **inputs,
        info={"run": Path(run_dir).resolve().name, **info},  # its name: no path of the host
        thresholds=thresholds,
        unknown_thresholds=unknown_thresholds,
        **service_options,
    )
