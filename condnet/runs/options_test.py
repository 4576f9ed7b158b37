import dataclasses
import json

import pytest

from condnet.hierarchy import Hierarchy
from condnet.runs.options import TrainingOptions

TREE = {"angular": ["square", "star"], "round": ["circle", "ring"]}


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"seed": -1}, ValueError, "--seed / seed must be an int >= 0. Received: seed=-1"),
        ({"learning_rate": float("nan")}, ValueError, "--learning-rate / learning_rate .*nan"),
        ({"learning_rate": float("inf")}, ValueError, "finite number > 0.*learning_rate=inf"),
        ({"learning_rate": 0}, ValueError, "learning_rate must be a finite number > 0"),
        ({"fine_tune_learning_rate": -1e-5}, ValueError, "--fine-tune-learning-rate"),
        ({"fine_tune_layers": -1}, ValueError, "--fine-tune-layers / fine_tune_layers"),
        ({"epochs": 0}, ValueError, "--epochs / epochs must be an int >= 1"),
        ({"epochs": True}, TypeError, "epochs must be an int >= 1. Received: epochs=True"),
        ({"batch_size": 0}, ValueError, "--batch-size / batch_size must be an int >= 1"),
        ({"patience": 0}, ValueError, "--patience / patience must be an int >= 1"),
        ({"validation_split": 1.0}, ValueError, "--validation-split / validation_split"),
        ({"image_size": 0}, ValueError, "--image-size / image_size: .*from 1 to 2048 pixels"),
        ({"image_size": (32, 4096)}, ValueError, "2048 pixels a side.*memory.*\\(32, 4096\\)"),
        ({"image_size": "big"}, TypeError, "--image-size / image_size: image_size must be an"),
        ({"capacity_factor": 0}, ValueError, "--capacity-factor / capacity_factor"),
        ({"confidence_threshold": 0}, ValueError, "--confidence-threshold .*\\(0, 1\\]"),
        ({"confidence_threshold": 1.5}, ValueError, "confidence_threshold=1.5"),
        ({"temperature": float("nan")}, ValueError, "--temperature / temperature"),
        ({"routing": "top1"}, ValueError, "--routing / routing must be one of .*'top1'"),
        ({"dispatch": "sparse"}, ValueError, "--dispatch / dispatch must be one of"),
        ({"color_mode": "cmyk"}, ValueError, "--color-mode / color_mode must be one of"),
        ({"loss_schedule": "linear"}, ValueError, "--loss-schedule / loss_schedule"),
        ({"upcycle_epochs": -1}, ValueError, "--upcycle-epochs / upcycle_epochs must be an int"),
        ({"head_units": -8}, ValueError, "--head-units / head_units: head_units must be an int"),
        ({"head_units": "wide"}, TypeError, "head_units must be an int >= 0 or 'auto'"),
        ({"expert_dropout": 1.0}, ValueError, "--expert-dropout / expert_dropout must be in"),
        ({"outlier_loss_weight": -1}, ValueError, "outlier_loss_weight must be a finite number"),
        ({"outlier_loss_weight": "x"}, TypeError, "outlier_loss_weight must be a number >= 0"),
        ({"filters": ()}, ValueError, "--filters / filters must be a non-empty sequence"),
        ({"discovery_groups": 1}, ValueError, "--discovery-groups / discovery_groups"),
        ({"hierarchy": 3}, TypeError, "--hierarchy / hierarchy must be a Hierarchy"),
        ({"split": ([0, 1], [1])}, ValueError, "no row in both parts"),
        ({"split": ([0, -1], [])}, TypeError, "split indices must be ints >= 0"),
        (
            {"dispatch": "capacity", "routing": "teacher"},
            ValueError,
            "Teacher forcing needs the true group",
        ),
        (
            {"dispatch": "capacity", "confidence_threshold": 0.5},
            ValueError,
            "Hedging \\(confidence_threshold\\) runs two experts per row",
        ),
        (
            {"dispatch": "capacity", "outlier_loss_weight": 1.0},
            ValueError,
            "Outlier exposure trains every expert on the other groups' rows",
        ),
        ({"weights": "imagenet"}, ValueError, "small_cnn trains from scratch"),
        (
            {"expert_placement": "branch", "backbone": "EfficientNetB0"},
            ValueError,
            "needs backbone='small_cnn'",
        ),
        ({"hierarchy": "auto", "split": ([0], [1])}, ValueError, "hierarchy='auto' with split"),
        ({"modality": "audio"}, ValueError, "--modality / modality must be one of"),
        ({"text_trunk": "lstm"}, ValueError, "--text-trunk / text_trunk must be one of"),
        ({"sequence_length": 0}, ValueError, "--sequence-length / sequence_length must be an"),
        ({"vocabulary_size": 2}, ValueError, "--vocabulary-size / vocabulary_size must be an"),
        (
            {"modality": "text", "backbone": "ResNet50", "augment": "none"},
            ValueError,
            r"--backbone / backbone, --augment / augment only apply to images, and this run "
            r"reads documents.*Received: backbone='ResNet50', augment='none'",
        ),
        (
            {"modality": "image", "text_trunk": "cnn"},
            ValueError,
            r"--text-trunk / text_trunk only apply to documents.*Received: text_trunk='cnn'",
        ),
        (
            {"modality": "text", "text_trunk": "hub"},
            ValueError,
            r"text_trunk='hub' reads documents with a pretrained keras-hub text backbone: name "
            r"its preset with --backbone.*Received: text_trunk='hub', backbone='small_cnn'",
        ),
        (
            {"modality": "text", "text_trunk": "hub", "backbone": "p", "augment": "none"}
            | {"vocabulary_size": 100},
            ValueError,
            r"--augment / augment, --vocabulary-size / vocabulary_size do not apply to "
            r"--text-trunk hub.*Received: augment='none', vocabulary_size=100",
        ),
        (
            {"modality": "text", "fine_tune_epochs": 2},
            ValueError,
            r"--fine-tune-epochs / fine_tune_epochs only apply to images.*--backbone names the "
            r"preset of --text-trunk hub",
        ),
        (
            {"modality": "text", "hierarchy": "auto"},
            ValueError,
            "--hierarchy auto discovers groups with a flat image classifier",
        ),
        (
            {"strategy": "staged", "epochs": 1},
            ValueError,
            r"--epochs / epochs of 2 or more.*Received: strategy='staged', epochs=1",
        ),
    ],
)
def test_options_refuse_bad_values_naming_the_flag(options, error, message):
    with pytest.raises(error, match=message):
        TrainingOptions(**options)


def test_a_hub_text_run_takes_its_preset_and_the_fine_tuning_options():
    options = TrainingOptions(
        modality="text",
        text_trunk="hub",
        backbone="bert_tiny_en_uncased",
        sequence_length=128,
        fine_tune_epochs=2,
        fine_tune_layers=3,
        fine_tune_learning_rate=1e-4,
    )
    assert TrainingOptions.from_config(options.to_config()) == options


def test_options_check_image_sizes_by_the_data_library_s_one_rule(tmp_path):
    from condnet.data.checks import check_image_size

    # The smallest side is the backbone's to check; the largest is the same everywhere.
    assert TrainingOptions(image_size=4).image_size == 4 and check_image_size(4) == (4, 4)
    assert TrainingOptions(image_size=(2048, 16)).image_size == (2048, 16)
    with pytest.raises(ValueError, match="2048 pixels a side") as refused:
        TrainingOptions(image_size=2049)
    with pytest.raises(ValueError, match="2048 pixels a side") as library:
        check_image_size(2049)
    assert str(refused.value) == f"--image-size / image_size: {library.value}"


def test_options_round_trip_through_json():
    options = TrainingOptions(
        hierarchy=Hierarchy(TREE),
        image_size=[32, 48],
        filters=[8, 16],
        split=([0, 2], [1]),
        dispatch="capacity",
        routing="hard",
    )
    assert options.hierarchy == TREE and options.image_size == (32, 48)
    assert options.filters == (8, 16) and options.split == ((0, 2), (1,))
    config = json.loads(json.dumps(options.to_config()))
    assert TrainingOptions.from_config(config) == options
    assert TrainingOptions(image_size=[40]).image_size == 40  # one side: a square


def test_from_config_skips_the_folders_and_refuses_unknown_keys():
    config = {**TrainingOptions(epochs=3).to_config(), "data_dir": "/data", "run_dir": "/run"}
    assert TrainingOptions.from_config(config).epochs == 3
    with pytest.raises(ValueError, match="unknown fields \\['epoch'\\]"):
        TrainingOptions.from_config({"epoch": 3})


def test_options_are_frozen_and_replace_validates():
    options = TrainingOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 3
    assert dataclasses.replace(options, epochs=3).epochs == 3
    with pytest.raises(ValueError, match="--seed / seed"):
        dataclasses.replace(options, seed=-2)


def test_fields_of_separates_options_from_fit_arguments():
    fields, others = TrainingOptions.fields_of({"epochs": 2, "verbose": 0, "routing": "hard"})
    assert fields == {"epochs": 2, "routing": "hard"} and others == {"verbose": 0}


def test_a_run_of_either_modality_keeps_the_options_of_the_other_at_their_defaults():
    text = TrainingOptions(modality="text", text_trunk="gru", sequence_length=64)
    assert (text.image_size, text.backbone) == ("auto", "small_cnn")
    image = TrainingOptions(modality="image", image_size=48, backbone="MobileNetV3Small")
    assert (image.text_trunk, image.sequence_length, image.vocabulary_size) == ("bag", 256, 20000)
    # auto resolves from the folder, then checks again: any option may be given until then
    assert TrainingOptions(text_trunk="cnn", image_size=32).modality == "auto"
