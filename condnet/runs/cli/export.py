"""`condnet export`: write a run's model as ONNX or a TensorFlow SavedModel that routes in the
graph."""

import os
import sys

from condnet.runs._backend import backend_name
from condnet.runs.cli.common import add_inference_flags, add_run_dir, inference_options


def add_parser(commands, common):
    from condnet.choices import EXPORT_FORMATS as FORMATS

    p = commands.add_parser(
        "export",
        parents=[common],
        help="write a run's model as ONNX or a TensorFlow SavedModel that routes in the graph",
        description="Export RUN_DIR's model. onnx and tf_saved_model route inside the graph: "
        "each expert runs on its own rows only (a batch of one runs one expert), and the "
        "artifact needs neither Keras nor condnet (ONNX Runtime / TensorFlow). keras copies "
        "the run's model file, which routes only through condnet's predict. The graph is "
        "traced with TensorFlow whatever KERAS_BACKEND says. A text run exports to "
        "tf_saved_model (strings in: its TextVectorization runs in the graph) or keras; "
        "tf2onnx does not convert its string ops, so onnx is refused.",
    )
    add_run_dir(p)
    p.add_argument("--format", choices=FORMATS, default="onnx", help="(default: onnx)")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="file (.onnx, .keras) or folder (SavedModel) to write "
        "(default: RUN_DIR/export/model.onnx, saved_model or model.keras)",
    )
    add_inference_flags(
        p,
        ("routing", "model"),
        defaults={"routing": "hard"},
        helps={
            "routing": "hard: route in the graph; soft: every expert on every row "
            "(default: {default})",
            "model": "the run's model file to export: model.keras (default), "
            "model.calibrated.keras or a path",
        },
    )
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    p.set_defaults(run=_run)


def needs_tensorflow(argv):
    """Graph exports trace TensorFlow: true for `export` (but --format keras) on another backend."""
    words = [word for word in argv if not word.startswith("-")]
    if words[:1] != ["export"] or _flag_value(argv, "--format") == "keras":
        return False
    return backend_name()[0] != "tensorflow"


def run_with_tensorflow(argv):
    """Run the same command in a process whose Keras backend is TensorFlow (Keras cannot
    change its backend once imported; the run's .keras file loads on any backend)."""
    import subprocess

    print(
        f"condnet export: tracing with TensorFlow (the backend here is {backend_name()[0]}).",
        file=sys.stderr,
        flush=True,
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([sys.executable, "-m", "condnet", *argv], env=env).returncode


def _flag_value(argv, flag):
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def _run(args):
    from condnet.runs.deploy import export_run

    options = inference_options(args)
    path = export_run(
        args.run_dir,
        out=args.out,
        format=args.format,
        routing=options.routing,
        model_file=options.model,
        overwrite=args.overwrite,
    )
    print(f"Exported {args.format} ({options.routing} routing) to {path}.")
