"""What the tests of the subcommands share: one tiny real run, trained once by `condnet
train`, and a finished run of the exact colour model."""

import json

import pytest

from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.cli import main
from condnet.runs.files import BEST, CONFIG

TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--no-augment", "--quiet"]
TRAIN += ["--no-tensorboard"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_shapes_dataset(root / "data", samples_per_class=8, image_size=32, test_samples_per_class=3)
    code = main(
        [
            "train",
            str(root / "data" / "train"),
            "--out",
            str(root / "run"),
            "--routing",
            "hard",
            *TRAIN,
        ]
    )
    assert code == 0
    return root


@pytest.fixture
def colour_run(tmp_path):
    """A finished run of the exact colour model and a folder of plain colour images."""
    from condnet.evaluation.evaluate_test import colour_model, make_colour_folders

    run = tmp_path / "run"
    run.mkdir()
    colour_model().save(run / BEST)
    options = {"image_size": 8, "color_mode": "rgb"}
    (run / CONFIG).write_text(json.dumps({"options": options}))
    return run, make_colour_folders(tmp_path / "data", per_class=2)
