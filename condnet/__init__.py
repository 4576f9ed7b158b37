"""condnet: conditional neural networks for Keras 3.

The modules that register Keras classes are imported here, so that
`import condnet` is enough for `keras.models.load_model` to rebuild a saved
model; other names are imported on first use.
"""

import importlib

from condnet import backbones, calibration, conditional_model  # noqa: F401  (registrations)

__version__ = "0.1.0"

_EXPORTS = {
    "ConditionalModel": "condnet.conditional_model",
    "Hierarchy": "condnet.hierarchy",
    "LossWeightSchedule": "condnet.callbacks",
    "StopOnNaN": "condnet.callbacks",
    "build_image_model": "condnet.image_model",
    "evaluate_predictions": "condnet.metrics",
    "fit_staged": "condnet.staged",
    "load_folders": "condnet.folders",
    "make_augmentation": "condnet.augmentation",
    "make_shapes_dataset": "condnet.demo_data",
    "routed_predict": "condnet.dispatch",
    "train": "condnet.recipe",
    "write_report": "condnet.report",
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
