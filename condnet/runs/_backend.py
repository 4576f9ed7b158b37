"""The Keras backend, checked before Keras is imported: a missing or unknown one is a message."""

import importlib.util
import json
import os
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
# The pip line that installs each backend (the package extras of condnet).
INSTALL = {name: f"pip install 'condnet[{name}]'" for name in BACKENDS}


def backend_name(environ=None):
    """`(name, where)`: the backend Keras will load, and what chose it.

    Keras reads `KERAS_BACKEND`, else the `"backend"` of `keras.json` in
    `KERAS_HOME` (default `~/.keras`), else uses TensorFlow.
    """
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"], "KERAS_BACKEND"
    home = Path(environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        name = json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        name = None
    if name:
        return name, str(home / "keras.json")
    return "tensorflow", "the default"


def check_backend(environ=None):
    """Raise a one-line error unless the backend is one condnet trains on, and installed."""
    name, where = backend_name(environ)
    named = where == "KERAS_BACKEND"
    if name not in BACKENDS:
        source = f"KERAS_BACKEND={name!r}" if named else f"The backend {name!r} in {where}"
        raise ValueError(
            f"{source} is not one of {', '.join(BACKENDS)}. Set KERAS_BACKEND to one of "
            f"them, e.g. `export KERAS_BACKEND=jax`. Received: backend={name!r}"
        )
    if not _installed(name):
        source = {
            "KERAS_BACKEND": f"KERAS_BACKEND={name}",
            "the default": f"The backend is {name} (the default)",
        }
        source = source.get(where, f"{where} sets the backend {name}")
        raise ImportError(
            f"{source}, but {name} is not installed: {INSTALL[name]}, or set KERAS_BACKEND "
            f"to an installed backend ({', '.join(BACKENDS)})."
        )
    return name


def _installed(module):
    return importlib.util.find_spec(module) is not None


def backend_problem(environ=None):
    """The error `check_backend` would raise, or None (for `import condnet` to test first)."""
    try:
        check_backend(environ)
    except (ValueError, ImportError) as error:
        return error
    return None
