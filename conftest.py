"""Settings shared by the whole test suite.

The same suite runs on every backend (`KERAS_BACKEND=tensorflow|jax|torch`). A
test that cannot may be marked `@pytest.mark.one_backend(reason="...")`: it then
runs under TensorFlow only, and its reason, which it must give, says why (it is
shown when the test is skipped). `CONDNET_TEST_ALL_BACKENDS=1` runs it on every
backend anyway.

Every test module and every test starts from the same random state (Python's,
NumPy's, the backend's and Keras's seed 0): what a test draws without a seed,
e.g. a model's initial weights, does not depend on which tests ran before it in
the same process, which differs from one machine (or `-n` worker split) to another.
"""

import os

import pytest

ONE_BACKEND = "tensorflow"


def _seed_everything():
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _seeded_module():
    """Before a module's own module-scoped fixtures (autouse ones come first)."""
    _seed_everything()


@pytest.fixture(autouse=True)
def _seeded_test():
    _seed_everything()


def pytest_collection_modifyitems(config, items):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    everywhere = backend == ONE_BACKEND or os.environ.get("CONDNET_TEST_ALL_BACKENDS") == "1"
    for item in items:
        marker = item.get_closest_marker("one_backend")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(
                f"{item.nodeid} is marked one_backend without saying why. Give the reason "
                'it cannot run on every backend: @pytest.mark.one_backend(reason="...").'
            )
        if not everywhere:
            item.add_marker(pytest.mark.skip(reason=f"one_backend ({ONE_BACKEND}): {reason}"))
