"""Settings shared by the whole test suite.

Tests marked `one_backend` check what condnet does around training: a run
directory that resumes, overwrites, survives a kill or a NaN epoch, the CLI's
commands end to end (demo, cv, calibrate), staged phases, the transfer recipe.
That logic is condnet's and the same on every backend, while training, saving and
loading on each backend are covered there by the unmarked tests (the models'
tests, the recipe's run and resume tests, the README). So these run on one
backend, TensorFlow, the default, which keeps the three-backend loop of CI within
its time. `CONDNET_TEST_ALL_BACKENDS=1` runs them on every backend.
"""

import os

import pytest

ONE_BACKEND = "tensorflow"


def pytest_collection_modifyitems(config, items):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == ONE_BACKEND or os.environ.get("CONDNET_TEST_ALL_BACKENDS") == "1":
        return
    skip = pytest.mark.skip(
        reason=f"one_backend: runs under KERAS_BACKEND={ONE_BACKEND} "
        "(CONDNET_TEST_ALL_BACKENDS=1 runs it here too)"
    )
    for item in items:
        if "one_backend" in item.keywords:
            item.add_marker(skip)
