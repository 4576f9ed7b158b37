"""Tests of a run's configuration: its options resolved, probed and built into its model."""

import csv

import keras
import pytest
from PIL import Image

from condnet.hierarchy import Hierarchy
from condnet.runs import run_config
from condnet.runs.files import HISTORY
from condnet.runs.options import TrainingOptions
from condnet.runs.recipe import train
from condnet.runs.recipe_test import TINY, user_model_file
from condnet.runs.run_config import (
    _build,
    read_run_options,
    resolve_augment,
    resolve_image_size,
    resolve_learning_rate,
    write_config,
)
from condnet.runs.run_data import load_data
from condnet.runs.run_dir import load_run
from condnet.runs.timing import RunTimes


def test_capacity_dispatch_reaches_the_model():
    options = TrainingOptions(
        routing="hard", dispatch="capacity", capacity_factor=2.0, image_size=16, filters=(4, 4)
    )
    model = _build(options, Hierarchy({"a": ["x", "y"], "b": ["z", "w"]}), channels=3)
    assert model.dispatch == "capacity" and model.capacity_factor == 2.0


@pytest.mark.parametrize(
    "flags, kept",
    [
        ([], {"RandomFlip", "RandomRotation"}),
        (["--no-flip"], {"RandomRotation"}),
        (["--no-flip", "--no-rotation"], set()),
    ],
)
def test_no_flip_and_no_rotation_drop_them_from_the_policy(flags, kept):
    from condnet.runs.cli import build_parser
    from condnet.runs.cli.common import given_options

    argv = ["train", "d", "--out", "r", "--augment", "standard", "--image-size", "16", *flags]
    given = given_options(build_parser().parse_args(argv))
    options = TrainingOptions(**given, filters=(4, 4))
    model = _build(options, Hierarchy({"a": ["x", "y"], "b": ["z", "w"]}), channels=3)
    augmentation = next(layer for layer in model._flatten_layers() if layer.name == "augmentation")
    names = {type(layer).__name__ for layer in augmentation.layers}
    assert names & {"RandomFlip", "RandomRotation"} == kept
    assert {"RandomZoom", "RandomTranslation"} <= names  # the rest of the policy stays


def test_expert_dropout_reaches_the_experts_only(shapes, tmp_path):
    result = train(shapes / "train", tmp_path / "run", epochs=1, expert_dropout=0.5, **TINY)
    model = result["model"]

    def rates(head):
        return [layer.rate for layer in head.layers if isinstance(layer, keras.layers.Dropout)]

    assert all(rates(e) == [0.5] for e in model.experts.values() if e is not None)
    assert rates(model.gate) == [0.3]


@pytest.mark.parametrize("weight", [0.0, 1.5])
def test_outlier_loss_weight_reaches_the_saved_model_and_its_training(shapes, tmp_path, weight):
    result = train(shapes / "train", tmp_path / "run", epochs=1, outlier_loss_weight=weight, **TINY)
    model, _ = load_run(tmp_path / "run")
    assert result["model"].outlier_loss_weight == model.outlier_loss_weight == weight
    with open(tmp_path / "run" / HISTORY, newline="") as file:
        logged = float(list(csv.DictReader(file))[-1]["outlier_loss"])
    assert (logged > 0) == (weight > 0)  # the term is in the loss only with a weight


@pytest.mark.parametrize(
    ("options", "policy"),
    [
        (dict(backbone="own.keras"), "none"),
        (dict(backbone="MobileNetV3Small", weights="imagenet"), "none"),
        (dict(backbone="own.keras", augment="light"), "light"),
        (dict(), "auto"),
    ],
)
def test_auto_augmentation_is_none_on_a_pretrained_backbone(options, policy):
    assert resolve_augment(TrainingOptions(**options)) == policy


@pytest.mark.parametrize(
    ("options", "rate"),
    [
        (dict(), 1e-3),
        (dict(modality="image"), 1e-3),
        (dict(modality="text"), 1e-2),
        (dict(modality="text", learning_rate=3e-4), 3e-4),
    ],
)
def test_auto_learning_rate_is_higher_for_documents(options, rate):
    assert resolve_learning_rate(TrainingOptions(**options)) == rate


@pytest.mark.parametrize(
    ("augmented", "error", "policy"),
    [(0.70, 0.01, "light"), (0.79, 0.001, "none"), (0.77, 0.01, "none")],
)
def test_auto_augmentation_on_a_pretrained_backbone_follows_the_probe(
    shapes, tmp_path, monkeypatch, augmented, error, policy
):
    from condnet.training import features

    # A drop of 3 points with a standard error of 1 may be 1 point: not sure enough.
    found = {"images": 12, "clean": 0.80, "augmented": augmented, "drop_error": error}
    monkeypatch.setattr(run_config, "PROBE_MIN_IMAGES", 1)
    monkeypatch.setattr(features, "augmentation_probe", lambda *args: found)
    backbone, _, _ = user_model_file(tmp_path)
    options = TrainingOptions(backbone=backbone, image_size=32, batch_size=16)
    train_data, validation = load_data(options, shapes / "train")
    options, model = run_config.resolve_options(options, train_data, validation)
    assert options.augment == policy  # a drop surely of 2 points or more turns it on
    layers = [layer.name for layer in model.trunk.layers]
    assert ("augmentation" in " ".join(layers)) == (policy == "light")
    assert train_data.augmentation_probe["augment"] == policy
    line = run_config.probe_line(train_data)
    assert "(a drop of %.1f points" % (100 * (0.80 - augmented)) in line
    assert "12 validation images 80.0% right as they are" in line
    times, probed = RunTimes(), train_data.augmentation_probe["seconds"]
    times.add("scan and prepare", probed + 2.0)
    run_config.time_probe((options, (train_data, None), model), times)  # the probe's pass
    assert times.seconds == pytest.approx({"scan and prepare": 2.0, "fit frozen features": probed})


def test_a_written_config_reads_back_as_the_same_options(tmp_path):
    hierarchy = Hierarchy({"a": ["x", "y"], "b": ["z"]})
    options = TrainingOptions(epochs=3, image_size=48, hierarchy=hierarchy.to_dict())
    write_config(tmp_path, tmp_path / "data", options, hierarchy)
    assert read_run_options(tmp_path) == (options, str(tmp_path / "data"))
    assert Hierarchy.from_file(tmp_path / "hierarchy.json") == hierarchy


def test_a_config_that_cannot_be_read_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no run to resume.*config.json is missing"):
        read_run_options(tmp_path)
    (tmp_path / "config.json").write_text('{"options": {}}')
    with pytest.raises(ValueError, match="not a readable run config.*KeyError"):
        read_run_options(tmp_path)


@pytest.mark.parametrize(
    ("sides", "size"), [((60, 70, 100), 72), ((10, 12, 20), 32), ((900,), 224)]
)
def test_auto_image_size_is_the_median_shorter_side(tmp_path, sides, size):
    for index, side in enumerate(sides):
        folder = tmp_path / "a" / "x"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (side + 5, side)).save(folder / f"{index}.png")
    options = resolve_image_size(TrainingOptions(image_size="auto"), tmp_path)
    assert options.image_size == size  # a multiple of 8 within 32..224


@pytest.mark.parametrize("hierarchy", [None, "auto"])
def test_auto_image_size_on_a_folder_of_outside_links_names_them(tmp_path, hierarchy):
    # Before, "no image could be opened" hid why: every class folder was a symlink
    # pointing outside DATA_DIR, which the scan skips.
    (tmp_path / "elsewhere" / "x").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "elsewhere" / "x" / "0.png")
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x").symlink_to(tmp_path / "elsewhere" / "x")
    options = TrainingOptions(image_size="auto", hierarchy=hierarchy)
    with pytest.raises(ValueError, match=r"could be opened.*1 symlink\(s\).*outside.*cp -al"):
        resolve_image_size(options, tmp_path / "data")
