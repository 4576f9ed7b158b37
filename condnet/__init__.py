"""condnet: conditional neural networks for Keras 3."""

from condnet.callbacks import LossWeightSchedule, StopOnNaN
from condnet.conditional_model import ConditionalModel
from condnet.dispatch import routed_predict
from condnet.hierarchy import Hierarchy
from condnet.staged import fit_staged

__version__ = "0.1.0"

__all__ = [
    "ConditionalModel",
    "Hierarchy",
    "LossWeightSchedule",
    "StopOnNaN",
    "fit_staged",
    "routed_predict",
]
