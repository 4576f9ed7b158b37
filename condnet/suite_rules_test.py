"""The test suite's own rule (conftest.py): a test kept to one backend says why."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).parents[1] / "conftest.py"


def _pytest(tmp_path, test_source, backend):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "rule_test.py").write_text(test_source)
    env = {**os.environ, "KERAS_BACKEND": backend}
    env.pop("CONDNET_TEST_ALL_BACKENDS", None)
    command = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "rule_test.py"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)


def test_a_one_backend_mark_without_a_reason_stops_the_collection(tmp_path):
    source = "import pytest\n\n@pytest.mark.one_backend\ndef test_x():\n    pass\n"
    result = _pytest(tmp_path, source, "jax")
    assert result.returncode != 0
    assert "rule_test.py::test_x is marked one_backend without saying why" in result.stderr


def test_a_one_backend_test_is_skipped_elsewhere_with_its_reason(tmp_path):
    source = (
        "import pytest\n\n"
        '@pytest.mark.one_backend(reason="needs tf.distribute")\n'
        "def test_x():\n    pass\n"
    )
    elsewhere = _pytest(tmp_path, source, "torch")
    assert elsewhere.returncode == 0, elsewhere.stdout
    assert "one_backend (tensorflow): needs tf.distribute" in elsewhere.stdout
    assert "1 passed" in _pytest(tmp_path, source, "tensorflow").stdout
