"""Training phases: which parts train, with which loss weights, for how many epochs.

One mechanism serves `fit_staged` and the recipe (`condnet train
--strategy staged`): a list of `Phase`s, each of which sets the parts'
trainability and the model's three loss weights (gate, class, expert),
compiles, and fits on the whole data set. Because the expert loss of a row
reaches only its own group's expert, the "experts" phase trains each expert
on its own group's rows without splitting or copying the data, so image
folders stream as in any `fit` (the other groups' rows reach it only through
outlier exposure, which teaches it to answer evenly on them: see
`ConditionalModel.compile`).
"""

import dataclasses
import warnings

import keras
import numpy as np

from condnet.choices import STAGED_MIN_EPOCHS, STRATEGIES
from condnet.training.distribute import compile_options
from condnet.vision.backbones import tunable_layers, unfreeze_top

# Loss weights (gate, class, expert) of each kind of phase.
_PHASE_WEIGHTS = {
    "gate": (1.0, 0.0, 0.0),
    "experts": (0.0, 0.0, 1.0),
    "joint": (1.0, 1.0, 1.0),
    "fine_tune": (1.0, 1.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase.

    Args:
        name: str. `"gate"` (experts frozen, gate loss only), `"experts"`
            (trunk and gate frozen, masked expert loss only), `"joint"`
            (everything, every loss) or `"fine_tune"` (like joint, with the top
            of a pretrained backbone unfrozen).
        epochs: int. Epochs of the phase.
        learning_rate: float. Adam learning rate of the phase.
    """

    name: str
    epochs: int
    learning_rate: float

    @property
    def loss_weights(self):
        return _PHASE_WEIGHTS[self.name]


def plan_phases(
    strategy, epochs, fine_tune_epochs=0, learning_rate=1e-3, fine_tune_learning_rate=1e-5
):
    """The phases of a strategy: `joint` is one phase; `staged` is gate, experts, joint.

    `staged` gives the gate and the experts a third of `epochs` each (at least
    one: it needs `STAGED_MIN_EPOCHS`) and the joint phase the rest;
    `fine_tune_epochs` adds a fine-tuning phase. Phases of zero epochs are left
    out, so the phases add up to `epochs + fine_tune_epochs`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy must be one of {list(STRATEGIES)}. Received: strategy={strategy!r}"
        )
    if strategy == "staged" and epochs < STAGED_MIN_EPOCHS:
        raise ValueError(
            "The staged strategy trains the gate, then the experts, then both, at least one "
            f"epoch for each of the first two phases: it needs epochs >= {STAGED_MIN_EPOCHS}. "
            "Pass more epochs, or strategy='joint'. Received: strategy='staged', "
            f"epochs={epochs}"
        )
    if strategy == "staged":
        third = max(1, epochs // 3)
        phases = [
            Phase("gate", third, learning_rate),
            Phase("experts", third, learning_rate),
            Phase("joint", max(0, epochs - 2 * third), learning_rate),
        ]
    else:
        phases = [Phase("joint", epochs, learning_rate)]
    phases.append(Phase("fine_tune", fine_tune_epochs, fine_tune_learning_rate))
    return [phase for phase in phases if phase.epochs > 0]


def set_phase_trainable(model, phase, backbone=None, freeze_backbone=False, fine_tune_layers=20):
    """Freeze what `phase` must not train (compile again afterwards).

    Args:
        model: `ConditionalModel`.
        phase: `Phase` or its name.
        backbone: the pretrained model inside the trunk, if any.
        freeze_backbone: bool. Keep `backbone` frozen (outside fine-tuning).
        fine_tune_layers: int. Top layers of `backbone` a `"fine_tune"` phase unfreezes.
    """
    name = getattr(phase, "name", phase)
    for layer in model._flatten_layers(include_self=True):
        layer.trainable = True  # layer by layer: `model.trainable = True` may not reach them
    if name == "fine_tune" and backbone is not None:
        unfreeze_top(backbone, min(fine_tune_layers, tunable_count(backbone)))
    elif freeze_backbone and backbone is not None:
        backbone.trainable = False
    if name == "gate":
        for expert in model.expert_models:
            if expert is not None:
                expert.trainable = False
    if name == "experts":
        if model.trunk is not None:
            model.trunk.trainable = False
        model.gate.trainable = False


def prepare_phase(model, phase, **trainable_kwargs):
    """Set trainability (see `set_phase_trainable`), compile with Adam, set the loss weights."""
    set_phase_trainable(model, phase, **trainable_kwargs)
    model.compile(optimizer=keras.optimizers.Adam(phase.learning_rate), **compile_options())
    model.set_loss_weights(*phase.loss_weights)


def tunable_count(backbone):
    """The layers of `backbone` that `unfreeze_top` can unfreeze (`tunable_layers`)."""
    return len(tunable_layers(backbone))


def fit_staged(
    model,
    x,
    y=None,
    gate_epochs=5,
    expert_epochs=5,
    joint_epochs=0,
    learning_rate=1e-3,
    joint_learning_rate=1e-4,
    **fit_kwargs,
):
    """Train a ConditionalModel in phases and return each phase's History.

    1. **gate**: the experts are frozen; only the gate loss counts, so the
       gate (and the trunk, if any) learns the true group of every row.
    2. **experts**: the trunk and the gate are frozen; only the expert loss
       counts, and a row's expert loss reaches only its own group's expert,
       so each expert learns its classes from its own group's rows (a nested
       `ConditionalModel` expert learns through its own hierarchical output)
       and, with outlier exposure (the model's `outlier_loss_weight`), to
       answer evenly on the other groups' rows.
    3. **joint** (optional, `joint_epochs > 0`): everything trains with every
       loss at `joint_learning_rate`.

    Epochs count on across phases (`initial_epoch`), so callbacks such as
    `LossWeightSchedule(..., start_epoch=...)` and TensorBoard see one timeline.
    Every part is trainable again afterwards.

    Args:
        model: a `ConditionalModel`.
        x, y: training data, as for `model.fit` (arrays, an `ImageFolder`,
            a `tf.data.Dataset` ...).
        gate_epochs, expert_epochs, joint_epochs: ints. Epochs per phase.
        learning_rate: float. Adam learning rate of the gate and expert phases.
        joint_learning_rate: float. Adam learning rate of the joint phase.
        **fit_kwargs: passed to every `model.fit` call (`validation_data`,
            `batch_size`, `callbacks`, `verbose` ...).

    Returns:
        dict: `{"gate": History, "experts": History, "joint": History}` (a
        phase that did not run is absent).
    """
    _warn_empty_groups(model, x, y)
    phases = [
        Phase("gate", gate_epochs, learning_rate),
        Phase("experts", expert_epochs, learning_rate),
        Phase("joint", joint_epochs, joint_learning_rate),
    ]
    histories, epoch = {}, 0
    try:
        for phase in (p for p in phases if p.epochs > 0):
            prepare_phase(model, phase)
            end = epoch + phase.epochs
            histories[phase.name] = model.fit(x, y, initial_epoch=epoch, epochs=end, **fit_kwargs)
            epoch = end
    finally:
        set_phase_trainable(model, "joint")
    return histories


def _warn_empty_groups(model, x, y):
    labels = y if y is not None else getattr(x, "labels", None)
    if labels is None or hasattr(labels, "element_spec"):
        return
    groups = model.hierarchy.class_to_group[np.asarray(labels).reshape(-1).astype(int)]
    for g, group in enumerate(model.hierarchy.groups):
        if model.experts[group] is not None and not np.any(groups == g):
            warnings.warn(
                f"Group {group!r} has no training rows, so its expert will not learn its classes. "
                "Add samples of its classes.",
                stacklevel=3,
            )
