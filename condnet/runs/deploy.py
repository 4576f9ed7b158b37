"""`condnet export` and `condnet serve`: a finished run where users deploy it."""

import shutil
from pathlib import Path

from condnet.choices import EXPORT_FORMATS as FORMATS
from condnet.runs.run_dir import input_shape_of, load_run

DEFAULT_NAMES = {"onnx": "model.onnx", "tf_saved_model": "saved_model", "keras": "model.keras"}


def export_run(run_dir, out=None, format="onnx", routing="hard", model_file=None, overwrite=False):
    """Export a run's model; returns the path written.

    `out` defaults to `RUN_DIR/export/model.onnx`, `.../saved_model` or
    `.../model.keras`. `onnx` and `tf_saved_model` route inside the graph
    (see `condnet.deploy.export`); `keras` copies the run's hard-routed model
    file, which routes only through condnet's own `predict`. An existing `out`
    is kept unless `overwrite=True`, and even then it is replaced only once the
    new artifact is complete.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}. Received: format={format!r}")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export" / DEFAULT_NAMES[format]
    if out.resolve().parent == run_dir.resolve():
        raise ValueError(
            "An export may not sit beside the run's own files (it could replace one of them): "
            f"write it to RUN_DIR/export/ or elsewhere. Received: out={str(out)!r}"
        )
    if out.exists() and not overwrite:
        raise ValueError(
            f"{str(out)!r} already exists: pass --overwrite (overwrite=True) to replace it, "
            f"or another --out. Received: out={str(out)!r}"
        )
    if format == "onnx" and out.suffix.lower() != ".onnx":
        raise ValueError(f"An ONNX export is one file ending in .onnx. Received: out={str(out)!r}")
    model, config = load_run(run_dir, model_file=model_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".partial-{out.name}")
    _remove(partial)
    if format == "keras":
        model.routing = routing
        model.save(partial)
    else:
        from condnet.deploy.export import export_model

        export_model(model, partial, format, input_shape_of(config)[1:], routing=routing)
    _remove(out)
    partial.replace(out)
    return out


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# === serve ===


def serve_app(run_dir, routing="hard", model_file=None, **service_options):
    """The FastAPI app serving a run (see `condnet.deploy.serve.create_app`)."""
    from condnet.deploy.serve import create_app
    from condnet.runs.run_dir import model_info

    model, config = load_run(run_dir, model_file=model_file, routing=routing)
    _, height, width, _ = input_shape_of(config)
    info = {}
    if hasattr(model, "gate"):  # a conditional model (an ensemble has no single route)
        described = model_info(model, config).items()
        info = {k: v for k, v in described if k not in ("hierarchy", "routing")}
    return create_app(
        model,
        (height, width),
        color_mode=config["options"]["color_mode"],
        info={"run_dir": str(Path(run_dir).resolve()), **info},
        **service_options,
    )
