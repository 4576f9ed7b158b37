import keras
import numpy as np
import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.data.splits import load_folders
from condnet.training.features import features_fit, frozen_features


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, samples_per_class=6, image_size=16, test_samples_per_class=1)
    return load_folders(root / "train", image_size=16, batch_size=8, validation_split=0.25, seed=0)


def _trunk(frozen=True):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
    trunk = keras.Model(inputs, {"features": keras.layers.GlobalAveragePooling2D()(x)})
    trunk.trainable = not frozen
    return trunk


class _Counting:
    """Counts the images a trunk's `predict_on_batch` is given."""

    def __init__(self, trunk):
        self.trunk, self.images = trunk, 0

    def __call__(self, images):
        self.images += len(images)
        return keras.Model.predict_on_batch(self.trunk, images)


def test_frozen_features_runs_the_trunk_once_per_image(folders, monkeypatch):
    train, _ = folders
    trunk = _trunk()
    counting = _Counting(trunk)
    monkeypatch.setattr(trunk, "predict_on_batch", counting)
    features, labels = frozen_features(trunk, train)
    again, _ = frozen_features(trunk, train)  # a second epoch, or the flat baseline
    assert counting.images == train.num_samples
    assert features["features"].shape == (train.num_samples, 4)
    assert again is features
    assert sorted(labels) == sorted(train.labels)


def test_frozen_features_match_the_trunk_row_by_row(folders):
    _, validation = folders
    trunk = _trunk()
    features, labels = frozen_features(trunk, validation)
    images, expected_labels = validation.numpy()  # in file order, the validation's order
    np.testing.assert_array_equal(labels, expected_labels)
    expected = keras.ops.convert_to_numpy(trunk(images)["features"])
    np.testing.assert_allclose(features["features"], expected, atol=1e-5)


def test_new_weights_compute_the_features_again(folders):
    train, _ = folders
    trunk = _trunk()
    before, _ = frozen_features(trunk, train)
    kernel = trunk.get_layer("conv").kernel
    kernel.assign(kernel + 1.0)
    after, _ = frozen_features(trunk, train)
    assert not np.allclose(before["features"], after["features"])


def test_features_are_used_only_for_a_frozen_unaugmented_trunk(folders):
    assert features_fit(_trunk(), folders)
    assert not features_fit(_trunk(frozen=False), folders)
    assert not features_fit(_trunk(), folders, augmented=True)
    assert not features_fit(None, folders)


def _pixels_trunk():
    inputs = keras.Input((16, 16, 3))
    trunk = keras.Model(inputs, {"features": keras.layers.Flatten()(inputs)})
    trunk.trainable = False
    return trunk


def test_the_augmentation_probe_scores_validation_as_it_is_and_transformed(folders):
    from condnet.training.features import augmentation_probe

    train, validation = folders
    trunk = _pixels_trunk()
    same = augmentation_probe(trunk, train, validation, lambda images, training: images)
    assert same["images"] == validation.num_samples
    assert same["clean"] == same["augmented"] > 1 / train.hierarchy.num_classes
    assert same["drop_error"] == 0.0  # paired: no image changed its answer
    negative = augmentation_probe(trunk, train, validation, lambda images, training: 255 - images)
    assert negative["clean"] == same["clean"]  # the features as they are: computed once
    assert negative["augmented"] < negative["clean"]
    # each image's difference is -1, 0 or 1: the error of their mean is at most 1 / sqrt(n - 1)
    assert 0 < negative["drop_error"] <= 1 / np.sqrt(validation.num_samples - 1)
    assert frozen_features(trunk, validation) is frozen_features(trunk, validation)
