import warnings

import keras
import numpy as np

from condnet.evaluation.evaluate_test import colour_model
from condnet.models.ensemble import Ensemble


def test_an_ensemble_of_built_members_is_built_and_saves_without_a_warning(tmp_path):
    members = [colour_model(), colour_model()]
    members[1]._name = "second"  # one archive holds them all: names must differ
    ensemble = Ensemble(members[0].hierarchy, members)
    assert ensemble.built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ensemble.save(tmp_path / "ensemble.keras")
    assert not [w for w in caught if "not yet been built" in str(w.message)]
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    images = np.full((1, 8, 8, 3), (250, 0, 0), "float32")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0)["classes"],
        ensemble.predict(images, verbose=0)["classes"],
        atol=1e-6,
    )
