"""condnet: conditional neural networks for Keras 3."""

from condnet.callbacks import LossWeightSchedule, StopOnNaN
from condnet.conditional_model import ConditionalModel
from condnet.dispatch import routed_predict
from condnet.hierarchy import Hierarchy

__version__ = "0.1.0"

__all__ = [
    "ConditionalModel",
    "Hierarchy",
    "LossWeightSchedule",
    "StopOnNaN",
    "routed_predict",
]
