"""Evaluate a ConditionalModel on labelled batches, routed as it routes at inference."""

import numpy as np

from condnet.evaluation.metrics import evaluate_predictions


def evaluate_model(model, data):
    """Metrics of a ConditionalModel on an ImageFolder, in one pass over its batches."""
    outputs, labels = [], []
    for index in range(len(data)):
        images, batch_labels = data[index][:2]
        outputs.append(predict_batch(model, images))
        labels.append(np.asarray(batch_labels))
    stacked = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return evaluate_predictions(
        model.hierarchy,
        np.concatenate(labels),
        stacked["classes"],
        group_probabilities=stacked["groups"],
        route=stacked["route"],
    )


def predict_batch(model, images):
    """The model's outputs on one batch, as numpy, with its inference routing.

    `ConditionalModel.predict` decides: under a hard routing only the chosen
    expert of each row runs.
    """
    outputs = model.predict(images, batch_size=len(images), verbose=0)
    return {key: np.asarray(value) for key, value in outputs.items()}
