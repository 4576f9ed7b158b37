"""Fixtures shared by the tests of the recipe and its parts."""

import pytest

from condnet.data.demo_data import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small folder of shapes, `train/<group>/<class>/*.png` (12 per class) and `test/`."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, samples_per_class=12, image_size=32, test_samples_per_class=4)
    return root
