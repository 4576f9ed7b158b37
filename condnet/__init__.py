"""condnet: conditional neural networks for Keras 3.

The modules that register Keras classes are imported here, so that
`import condnet` is enough for `keras.models.load_model` to rebuild a saved
model; other names are imported on first use.
"""

import importlib
import os
import re
import sys
import tempfile
from pathlib import Path

from condnet.runs._backend import backend_problem

# TensorFlow's C++ start-up lines: absl's pre-init warning, `I0000 ...` / `W0000 ...` log
# lines (the oneDNN notice, the CPU-feature notice) and the notice's second line.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |To enable the following "
    r"instructions"
)


def _startup_noise(line):
    """Whether `line` is one of TensorFlow's INFO / WARNING start-up lines."""
    return _STARTUP_NOISE.match(line) is not None


def _import_keras_quietly():
    """Import Keras (and with it the backend) without TensorFlow's INFO and WARNING lines.

    Unless the user set `TF_CPP_MIN_LOG_LEVEL`, it is set to 2 (errors only) before
    TensorFlow loads, and what the import writes on standard error is written back without
    the start-up lines that TensorFlow prints before it reads that variable; any other
    line (an error) is kept. A user who set the variable sees everything."""
    if "keras" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import keras  # noqa: F401

        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as captured:
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            import keras  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not _startup_noise(line)]
            sys.stderr.write("".join(kept))


def register_saved_classes():
    """Import the modules that register condnet's saved classes (ConditionalModel, Ensemble,
    backbone layers, TemperatureScaling, the text layers TokenMean, PositionEmbedding,
    HubTokenizer and BackboneInputs) with Keras, so keras.models.load_model finds them."""
    _import_keras_quietly()
    from condnet.evaluation import calibration  # noqa: F401
    from condnet.models import conditional_model, ensemble  # noqa: F401
    from condnet.text import hub_text_model, text_model  # noqa: F401
    from condnet.vision import backbones  # noqa: F401


def _is_condnet_command():
    """Whether this process is the `condnet` console script that pip installed beside this
    Python (its `scripts` folder, or the user scheme's), which imports the package first.

    Only that script may put registration off: the CLI registers the classes itself once a
    command runs (`condnet.runs.cli`). Any other program, whatever its name (a user's script
    called `condnet` included), registers them on `import condnet`."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name != "condnet":
        return False
    import sysconfig

    folders = {sysconfig.get_path("scripts")}
    folders.add(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")))
    try:
        return Path(program).resolve() in {(Path(f) / "condnet").resolve() for f in folders if f}
    except (OSError, RuntimeError):  # an unreadable path or a symlink loop: not the script
        return False


# `import condnet` registers them, so that it is enough for keras.models.load_model. With a
# missing or bogus KERAS_BACKEND, Keras is not imported here: the CLI then reports the
# problem in one line. The installed `condnet` command registers them itself once a command
# runs, so that `condnet --help` and `condnet --version` answer without importing Keras.
if backend_problem() is None and not _is_condnet_command():
    register_saved_classes()

__version__ = "0.1.0"

_EXPORTS = {
    "ConditionalModel": "condnet.models.conditional_model",
    "Hierarchy": "condnet.hierarchy",
    "LossWeightSchedule": "condnet.training.callbacks",
    "StopOnNaN": "condnet.training.callbacks",
    "build_image_model": "condnet.vision.image_model",
    "evaluate_predictions": "condnet.evaluation.metrics",
    "fit_staged": "condnet.training.staged",
    "load_folders": "condnet.data.splits",
    "make_augmentation": "condnet.vision.augmentation",
    "make_shapes_dataset": "condnet.data.demo_data",
    "routed_predict": "condnet.models.dispatch",
    "train": "condnet.runs.recipe",
    "upcycle": "condnet.training.upcycle",
    "upcycle_source": "condnet.training.upcycle",
    "write_report": "condnet.evaluation.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'condnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
