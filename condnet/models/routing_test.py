import numpy as np
import pytest
from keras import ops

from condnet.models import routing

PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]], "float32")


def test_soft_routing_returns_gate_probabilities():
    weights = routing.route_weights(PROBABILITIES, "soft")
    np.testing.assert_allclose(ops.convert_to_numpy(weights), PROBABILITIES)


@pytest.mark.parametrize("mode", ["hard", "gumbel", "teacher"])
def test_hard_modes_at_inference_pick_the_top_group(mode):
    weights = ops.convert_to_numpy(routing.route_weights(PROBABILITIES, mode))
    np.testing.assert_array_equal(weights, np.eye(3)[[0, 0, 2]])


def test_hard_routing_while_training_is_one_hot_forward():
    weights = ops.convert_to_numpy(routing.route_weights(PROBABILITIES, "hard", training=True))
    np.testing.assert_allclose(weights, np.eye(3)[[0, 0, 2]], atol=1e-6)


def test_gumbel_routing_samples_one_hot_rows_that_follow_the_gate():
    import keras

    seed = keras.random.SeedGenerator(3)
    confident = np.tile([[0.98, 0.01, 0.01]], (200, 1)).astype("float32")
    weights = ops.convert_to_numpy(
        routing.route_weights(confident, "gumbel", training=True, seed=seed)
    )
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    assert set(np.round(weights, 5).ravel()) <= {0.0, 1.0}
    assert weights[:, 0].mean() > 0.9  # the likely group is sampled most often


def test_confidence_threshold_mixes_the_top_two_groups_of_unsure_rows():
    weights = ops.convert_to_numpy(
        routing.route_weights(PROBABILITIES, "hard", confidence_threshold=0.5)
    )
    np.testing.assert_allclose(weights[0], [1, 0, 0])
    np.testing.assert_allclose(weights[1], [0.4 / 0.75, 0.35 / 0.75, 0], rtol=1e-5)
    np.testing.assert_allclose(weights[2], [0, 0, 1])


def test_straight_through_passes_soft_gradients():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient tape check written for the tensorflow backend")
    import tensorflow as tf

    soft = tf.Variable([[0.6, 0.4]])
    with tf.GradientTape() as tape:
        probabilities = tf.identity(soft)
        out = routing.straight_through(routing.hard_weights(probabilities), probabilities)
        loss = tf.reduce_sum(out * tf.constant([[1.0, 2.0]]))
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.0]])
    np.testing.assert_allclose(tape.gradient(loss, soft).numpy(), [[1.0, 2.0]])


def test_unknown_routing_is_rejected():
    with pytest.raises(ValueError, match="Received: routing='top1'"):
        routing.check_routing("top1")
