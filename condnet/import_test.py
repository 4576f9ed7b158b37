import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import condnet
from condnet.testing import cats_and_dogs_model, random_data

IMPORT = "import os, condnet, keras; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"


def _import_condnet(**environ):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(KERAS_BACKEND="tensorflow", **environ)
    done = subprocess.run(
        [sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_import_condnet_prints_no_tensorflow_info_or_warning_lines():
    done = _import_condnet()
    assert done.stdout.strip() == "2"  # errors only, set before TensorFlow loads
    assert "oneDNN" not in done.stderr
    assert "absl::InitializeLog" not in done.stderr
    assert not [
        line for line in done.stderr.splitlines() if line[:1] in "IW" and line[1:5].isdigit()
    ]


@pytest.mark.slow
def test_import_condnet_keeps_the_log_level_the_user_set():
    done = _import_condnet(TF_CPP_MIN_LOG_LEVEL="0")
    assert done.stdout.strip() == "0"


@pytest.mark.parametrize(
    "line, noise",
    [
        ("WARNING: All log messages before absl::InitializeLog() is called are written", True),
        ("I0000 00:00:1796577349.216151   26096 port.cc:153] oneDNN custom operations", True),
        ("W0000 00:00:1796577349.216151   26096 cpu_feature_guard.cc:227] ...", True),
        ("To enable the following instructions: AVX2 FMA, in other operations, ...", True),
        ("E0000 00:00:1796577349.216151   26096 cuda_dnn.cc:8310] Unable to register", False),
        ("ImportError: libcudart.so.12: cannot open shared object file", False),
    ],
)
def test_only_tensorflow_startup_lines_are_left_out(line, noise):
    assert condnet._startup_noise(line) is noise


LOAD = """
import sys
import condnet, keras, numpy as np
model = keras.models.load_model(sys.argv[1], safe_mode=True)
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0)["classes"])
"""


@pytest.mark.slow
def test_a_script_named_condnet_loads_a_saved_model_with_safe_mode(tmp_path):
    # Only the installed `condnet` command puts registration off; a user's script that
    # happens to be called condnet registers the classes on `import condnet`.
    model = cats_and_dogs_model()
    x, _ = random_data(8)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "bin" / "condnet"
    script.parent.mkdir()
    script.write_text(LOAD)
    done = subprocess.run(
        [sys.executable, str(script), *(str(tmp_path / n) for n in ("model.keras", "x.npy", "y"))],
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), model.predict(x, verbose=0)["classes"], atol=1e-6
    )
