import json

import keras
import numpy as np
import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.models import precision as precision_lib
from condnet.models.precision import precision_of
from condnet.runs.cli import build_parser, main
from condnet.runs.cli.common import given_options
from condnet.runs.options import TrainingOptions
from condnet.runs.recipe import train

TRAIN = ["--epochs", "1", "--image-size", "16", "--filters", "8", "8", "--batch-size", "16"]
TRAIN += ["--no-augment", "--no-tensorboard", "--quiet"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, samples_per_class=6, image_size=16, test_samples_per_class=2)
    return root


def test_precision_option_defaults_to_auto_and_refuses_other_policies():
    assert TrainingOptions().precision == "auto"
    assert TrainingOptions(precision="mixed_float16").precision == "mixed_float16"
    with pytest.raises(ValueError, match=r"--precision / precision must be one of \['auto'"):
        TrainingOptions(precision="bfloat16")


def test_precision_flag_is_generated_from_the_option(capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "d", "--out", "r", "--precision", "mixed_bfloat16"])
    assert given_options(args) == {"precision": "mixed_bfloat16"}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "d", "--out", "r", "--precision", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_in_mixed_bfloat16_and_the_run_keeps_it(shapes, tmp_path):
    run = tmp_path / "run"
    argv = ["train", str(shapes / "train"), "--out", str(run), "--routing", "hard"]
    assert main([*argv, "--precision", "mixed_bfloat16", *TRAIN]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["precision"] == "mixed_bfloat16"
    model = keras.models.load_model(run / "model.keras", safe_mode=True)
    assert model.dtype_policy.name == precision_of(model) == "mixed_bfloat16"
    assert model.gate.layers[-1].compute_dtype == "float32"
    baseline = keras.models.load_model(run / "baseline.keras", safe_mode=True)
    assert precision_of(baseline) == "mixed_bfloat16"  # the flat baseline trains alike
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p)) for p in _some(shapes)])
    routed = model.predict(images, verbose=0)
    every_expert = model.predict(images, verbose=0, routed=False)
    np.testing.assert_array_equal(routed["route"], every_expert["route"])
    np.testing.assert_allclose(routed["classes"], every_expert["classes"], atol=0.02)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["baseline"]["flat"]["accuracy"] >= 0
    resume = [*argv, "--resume", *TRAIN, "--epochs", "2"]  # the stored policy goes on
    assert main(resume) == 0
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3  # header + 2
    assert precision_of(keras.models.load_model(run / "model.keras")) == "mixed_bfloat16"


def _some(shapes, count=8):
    return sorted((shapes / "test").rglob("*.png"))[:count]


@pytest.mark.slow
def test_auto_precision_is_written_as_the_policy_it_chose(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_lib, "_accelerator", lambda: ("cpu", (0, 0)))
    run = tmp_path / "run"
    train(
        shapes / "train",
        run,
        epochs=1,
        image_size=16,
        filters=(8, 8),
        augment="none",
        tensorboard=False,
        baseline=False,
        verbose=0,
    )
    assert json.loads((run / "config.json").read_text())["options"]["precision"] == "float32"
    assert precision_of(keras.models.load_model(run / "model.keras")) == "float32"
