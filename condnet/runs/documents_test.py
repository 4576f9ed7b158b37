import io
import json
import random
import re
import shutil
import warnings

import keras
import numpy as np
import pytest

from condnet.runs.cli import main
from condnet.runs.documents import jsonl_documents, line_documents
from condnet.runs.run_dir import read_state
from condnet.testing import tiny_bert_preset

WORDS = {
    ("animals", "cat"): "purr whisker litter kitten meow",
    ("animals", "dog"): "bark leash puppy fetch kennel",
    ("vehicles", "bus"): "route ticket stop passenger timetable",
    ("vehicles", "car"): "engine wheel garage sedan driver",
}
FILLER = "the a of and to in is it was my".split()
# A short text run: the documents are 16 words, so 32 ids hold them whole.
TRAIN = ["--epochs", "2", "--sequence-length", "32", "--learning-rate", "0.05"]
TRAIN += ["--batch-size", "8", "--quiet", "--no-tensorboard"]


def make_documents(root, per_class=32, seed=0):
    """root/<group>/<class>/*: short documents of their class's words among filler, every
    third one without an extension; one Windows-1252 file, one empty, one binary."""
    rng = random.Random(seed)
    for (group, name), words in WORDS.items():
        folder = root / group / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            body = rng.choices(words.split(), k=10) + rng.choices(FILLER, k=6)
            rng.shuffle(body)
            text = " ".join(body[:8]) + "\n" + " ".join(body[8:]) + "\n"
            (folder / (f"{index:02d}.txt" if index % 3 else f"{index:02d}")).write_text(text)
    (root / "animals" / "cat" / "latin1.txt").write_bytes("purr café meow".encode("cp1252"))
    (root / "animals" / "dog" / "empty.txt").write_bytes(b"")
    (root / "vehicles" / "bus" / "blob.bin").write_bytes(bytes(range(256)) * 4)
    return root


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text run trained through the CLI, the warnings it gave, and a test folder."""
    root = tmp_path_factory.mktemp("text")
    make_documents(root / "train")
    make_documents(root / "test", per_class=6, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(root / "train"), "--out", str(root / "run"), *TRAIN]) == 0
    return root, [str(warning.message) for warning in caught]


def test_a_text_run_takes_the_documents_learning_rate_unless_given(tmp_path):
    from condnet.runs.recipe import train
    from condnet.runs.run_config import TEXT_LEARNING_RATE

    make_documents(tmp_path / "train", per_class=6)
    options = dict(epochs=1, sequence_length=32, baseline=False, report=False)
    train(tmp_path / "train", tmp_path / "run", tensorboard=False, verbose=0, **options)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["options"]
    assert stored["learning_rate"] == TEXT_LEARNING_RATE  # "auto", resolved and kept
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    rate = history[1].split(",")[history[0].split(",").index("learning_rate")]
    assert float(rate) == pytest.approx(TEXT_LEARNING_RATE)


def _json_lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


# === train ===


@pytest.mark.slow
def test_cli_trains_a_text_run_on_a_folder_of_documents(text_run):
    root, _ = text_run
    run = root / "run"
    for name in ("model.keras", "baseline.keras", "history.csv", "report.md", "report.html"):
        assert (run / name).is_file()
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["modality"] == "text"  # auto, resolved from the folder's content
    assert (options["text_trunk"], options["sequence_length"]) == ("bag", 32)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch_chosen_on"]["documents"] == metrics["num_samples"] == 25
    assert metrics["accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert metrics["baseline"]["flat"]["accuracy"] > 0.5  # the flat twin of the text model
    assert metrics["baseline"]["flat"]["epochs"] == 2
    assert set(json.loads((run / "timing.json").read_text())["parts"]) >= {"fit joint", "report"}
    assert not (run / "examples").exists()  # no thumbnails: documents are quoted
    report = (run / "report.md").read_text()  # every quoted document names its heavy words
    assert report.count(" / predicted ") == report.count("the words that weighed most: ")


@pytest.mark.slow
def test_a_text_run_splits_the_documents_it_reads(text_run):
    root, caught = text_run
    split = json.loads((root / "run" / "split.json").read_text())
    files = split["train"] + split["validation"]
    assert len(files) == 4 * 32 + 1 and "animals/cat/latin1.txt" in files
    assert "animals/cat/00" in files  # no extension: read by its content
    assert not {"animals/dog/empty.txt", "vehicles/bus/blob.bin"} & set(files)
    assert [m for m in caught if "Skipped 2 file(s)" in m and "1 empty, 1 binary" in m]
    fallbacks = [m for m in caught if "not valid UTF-8" in m]
    assert len(fallbacks) == 1 and fallbacks[0].startswith("1 of 129 documents")


@pytest.mark.slow
def test_a_text_run_model_loads_safely_and_predicts_strings(text_run):
    root, _ = text_run
    model = keras.models.load_model(root / "run" / "model.keras", safe_mode=True)
    assert model.routing == "hard"  # as the run ships it
    documents = [" ".join(words.split() * 2) for words in WORDS.values()]
    outputs = model.predict(documents, verbose=0)
    assert outputs["classes"].argmax(1).tolist() == [0, 1, 2, 3]  # cat, dog, bus, car
    assert outputs["route"].tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_a_text_run_resumes_with_its_own_vectorizer(text_run, tmp_path):
    root, _ = text_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    before = keras.models.load_model(run / "model.keras").preprocessor.get_vocabulary()
    words = ["train", str(root / "train"), "--out", str(run), "--resume", "--epochs", "3"]
    assert main([*words, "--quiet"]) == 0
    history = (run / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3"]
    after = keras.models.load_model(run / "model.keras").preprocessor.get_vocabulary()
    assert after == before


# === evaluate, predict ===


@pytest.mark.slow
def test_cli_evaluates_a_text_run_on_a_folder_of_documents(text_run, capsys):
    root, _ = text_run
    assert main(["evaluate", str(root / "run"), str(root / "test"), "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_samples"] == 4 * 6 + 1  # the empty and binary files are skipped
    assert metrics["accuracy"] > 0.5 and metrics["baseline"]["flat"]["accuracy"] > 0.5
    report = (root / "run" / "evaluation" / "report.md").read_text()
    assert f"{root / 'test'} (25 documents scored)" in report
    assert main(["evaluate", str(root / "run"), str(root / "test"), "--quiet"]) == 0
    assert f"{root / 'test'} (25 documents), hard-routed" in capsys.readouterr().out


def test_the_evaluation_report_names_the_words_that_weighed_in_each_mistake(text_run, tmp_path):
    root, _ = text_run
    swapped = make_documents(tmp_path / "swapped", per_class=3, seed=2)
    animals = swapped / "animals"  # cat and dog trade folders: the animals are all mistakes
    (animals / "cat").rename(animals / "was-cat")
    (animals / "dog").rename(animals / "cat")
    (animals / "was-cat").rename(animals / "dog")
    assert main(["evaluate", str(root / "run"), str(swapped), "--quiet"]) == 0
    report = (root / "run" / "evaluation" / "report.md").read_text()
    weighed = re.findall(r"predicted (cat|dog) .*the words that weighed most: (\w+)", report)
    assert weighed and report.count(" / predicted ") == report.count("weighed most: ")
    for predicted, heaviest in weighed:  # a word of the class the model chose
        assert heaviest in WORDS[("animals", predicted)].split()


@pytest.mark.slow
def test_cli_predicts_documents_from_lines_json_lines_and_files(text_run, tmp_path, capsys):
    root, _ = text_run
    run = str(root / "run")
    lines = tmp_path / "new.txt"
    lines.write_text("\n".join(" ".join(words.split() * 2) for words in WORDS.values()) + "\n\n")
    assert main(["predict", run, "--lines", str(lines), "--json", "--quiet"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [f"{lines}:{n}" for n in (1, 2, 3, 4)]
    assert [(row["group"], row["class"], row["expert"]) for row in rows] == [
        ("animals", "cat", "animals"),
        ("animals", "dog", "animals"),
        ("vehicles", "bus", "vehicles"),
        ("vehicles", "car", "vehicles"),
    ]
    stdin = io.StringIO('{"text": "bark bark puppy leash kennel fetch"}\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", stdin)
        assert main(["predict", run, "--jsonl", "-", "--json", "--quiet"]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert (row["path"], row["class"]) == ("-:1", "dog")


@pytest.mark.slow
def test_cli_predicts_document_files_and_says_which_cannot_be_read(text_run, capsys):
    root, _ = text_run
    folder, empty = root / "test" / "vehicles" / "car", root / "train" / "animals" / "dog"
    code = main(["predict", str(root / "run"), str(folder), str(empty / "empty.txt"), "--json"])
    assert code == 1
    captured = capsys.readouterr()
    rows = _json_lines(captured.out)
    assert [row["path"] for row in rows[:-1]] == sorted(str(p) for p in folder.iterdir())
    assert sum(row["class"] == "car" for row in rows[:-1]) >= 4  # of 6
    assert rows[-1] == {"path": str(empty / "empty.txt"), "error": "cannot decode: empty"}
    assert "1 input(s) could not be read" in captured.err and ", 7 documents" in captured.err


@pytest.mark.slow
def test_cli_predicts_documents_with_the_flat_baseline(text_run, tmp_path, capsys):
    root, _ = text_run
    lines = tmp_path / "new.txt"
    lines.write_text("engine wheel garage sedan driver engine wheel\n")
    words = ["predict", str(root / "run"), "--lines", str(lines), "--json", "--quiet"]
    assert main([*words, "--model", "baseline.keras"]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert (row["model"], row["class"], row["expert"]) == ("baseline", "car", "vehicles")


@pytest.mark.slow
@pytest.mark.parametrize(
    "words, message",
    [
        ([], "condnet predict needs something to predict"),
        (["--lines", "-", "--jsonl", "-"], "Standard input can feed --lines or --jsonl, not both"),
        (["NOWHERE"], "No such document file or folder: '.*nowhere'"),
        (["--lines", "NOWHERE"], "No such file: '.*nowhere'. Pass a text file of one document"),
        (["EMPTY_FOLDER"], "No documents found. Pass document files"),
    ],
)
def test_cli_predict_on_a_text_run_says_what_is_missing(text_run, tmp_path, capsys, words, message):
    root, _ = text_run
    (tmp_path / "empty").mkdir()
    names = {"NOWHERE": str(tmp_path / "nowhere"), "EMPTY_FOLDER": str(tmp_path / "empty")}
    assert main(["predict", str(root / "run"), *[names.get(w, w) for w in words]]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_a_text_run_whose_files_disagree_is_refused_by_name(text_run, tmp_path):
    from condnet.runs.run_dir import load_run

    root, _ = text_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["options"]["sequence_length"] = 64
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="names sequence_length=64, but model.keras was built for 32"
    ):
        load_run(run)
    config["options"]["sequence_length"] = "long"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hold sequence_length='long', where an int >= 1"):
        load_run(run)
    config["options"]["sequence_length"] = 32
    (run / "config.json").write_text(json.dumps(config))
    (run / "model.keras").unlink()
    with pytest.raises(ValueError, match="has no model.keras holding its TextVectorization"):
        load_run(run, model_file="baseline.keras")


# === calibrate, compare, info ===


@pytest.mark.slow
def test_cli_calibrates_a_text_run_on_its_validation_documents(text_run, tmp_path, capsys):
    root, _ = text_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    assert main(["calibrate", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["num_samples"] == 25 and report["model"] == "model.calibrated.keras"
    assert "temperatures on 25 validation documents" in captured.err
    nll = {side: report[side]["negative_log_likelihood"]["group"] for side in ("before", "after")}
    assert nll["after"] <= nll["before"] + 1e-9  # the gate's temperature fitted on them
    calibrated = keras.models.load_model(run / "model.calibrated.keras", safe_mode=True)
    model = keras.models.load_model(run / "model.keras")
    assert calibrated.preprocessor.get_vocabulary() == model.preprocessor.get_vocabulary()
    documents = [" ".join(words.split() * 2) for words in WORDS.values()]
    outputs = calibrated.predict(documents, verbose=0)  # strings in, as the run's model
    assert outputs["classes"].argmax(1).tolist() == [0, 1, 2, 3]
    lines = tmp_path / "new.txt"
    lines.write_text(documents[1] + "\n")
    words = ["predict", str(run), "--lines", str(lines), "--model", "model.calibrated.keras"]
    assert main([*words, "--json", "--quiet"]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert row["class"] == "dog"
    assert row["confidence"] == pytest.approx(float(outputs["classes"][1].max()), abs=1e-5)


@pytest.mark.slow
def test_cli_compares_a_text_run_by_its_text_trunk(text_run, capsys):
    root, _ = text_run
    assert main(["compare", str(root / "run"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["backbone"] == "bag (text)"  # not the image default, small_cnn
    assert row["accuracy"] > 0.5 and row["routed_mmacs"] is not None


@pytest.mark.slow
def test_cli_info_of_a_text_run_counts_per_document(text_run, capsys):
    root, _ = text_run
    assert main(["info", str(root / "run")]) == 0
    out = capsys.readouterr().out
    assert "MACs / document" in out and "MACs per document by route" in out
    assert main(["info", str(root / "run"), "--model", "baseline.keras"]) == 0
    assert "the flat baseline runs whole on every document" in capsys.readouterr().out


# === What text runs refuse ===


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["explain", "RUN", "DATA", "--out", "OUT"],
        ["backoff", "RUN"],
        ["unknown", "RUN"],
        ["extend", "RUN", "DATA", "--out", "OUT"],
        ["cv", "DATA", "--out", "OUT"],
    ],
)
def test_commands_without_text_support_refuse_a_text_run_in_one_line(
    text_run, tmp_path, capsys, command
):
    root, _ = text_run
    names = {"RUN": str(root / "run"), "DATA": str(root / "test"), "OUT": str(tmp_path / "o")}
    assert main([names.get(word, word) for word in command]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"condnet {command[0]}: error: `condnet {command[0]}` does not support text " in line
    if "RUN" in command:  # the line names the commands that do read a text run
        assert "`serve`, `compare` and `ensemble` read them" in line
    else:
        assert "`condnet tune` searches text runs on it" in line
    assert not (tmp_path / "o").exists()


def test_train_refuses_image_options_on_documents_before_writing(tmp_path, capsys):
    data = make_documents(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--image-size", "64", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--image-size / image_size only apply to images, and this run reads documents" in error
    assert "Received: image_size=64" in error and not run.exists()


def test_train_refuses_a_folder_of_empty_and_binary_files(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "data" / "g" / name).mkdir(parents=True)
        (tmp_path / "data" / "g" / name / "empty").write_bytes(b"")
        (tmp_path / "data" / "g" / name / "blob").write_bytes(b"\0\1\2" * 10)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--out", str(run), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "Found neither images nor text documents in" in error and not run.exists()


# === Documents to predict ===


def test_line_documents_skip_blank_lines_and_name_each_line(tmp_path):
    path = tmp_path / "tickets.txt"
    path.write_bytes("first one\n\n  \nsecond caf\xe9\n".encode("cp1252"))
    with pytest.warns(UserWarning, match="read as Windows-1252"):
        found = line_documents(str(path))
    assert found == [(f"{path}:1", "first one", None), (f"{path}:4", "second café", None)]
    assert line_documents("-", io.StringIO("a\nb\n")) == [("-:1", "a", None), ("-:2", "b", None)]
    with pytest.raises(ValueError, match="holds no document"):
        line_documents("-", io.StringIO("\n\n"))


def test_jsonl_documents_name_the_line_that_has_no_text(tmp_path):
    lines = '{"text": "a post"}\n{"body": "no text"}\n'
    with pytest.raises(ValueError, match='Line 2 of .-. cannot be read: it has no "text"'):
        jsonl_documents("-", io.StringIO(lines))
    with pytest.raises(ValueError, match="Line 1 of .-. cannot be read: it is not JSON"):
        jsonl_documents("-", io.StringIO("not json\n"))
    assert jsonl_documents("-", io.StringIO(lines.splitlines()[0])) == [("-:1", "a post", None)]


def test_predict_of_an_image_run_refuses_lines(tmp_path):
    from condnet.evaluation.evaluate_test import colour_model
    from condnet.runs.run_dir import predict_paths

    run = tmp_path / "run"
    run.mkdir()
    colour_model().save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps({"options": {"image_size": 8, "color_mode": "rgb"}})
    )
    with pytest.raises(ValueError, match="--lines and --jsonl read documents, and .* images"):
        predict_paths(run, [], lines="-")


# === A keras-hub backbone: --text-trunk hub ===

# Heads on a tiny random BERT's frozen features learn the keywords fast at 0.05.
HUB_TRAIN = ["--epochs", "5", "--learning-rate", "0.05", "--batch-size", "8"]
HUB_TRAIN += ["--sequence-length", "24", "--quiet", "--no-tensorboard"]
HUB_WORDS = {word for text in WORDS.values() for word in text.split()} | set(FILLER)
KEYWORD_DOCUMENTS = [" ".join(words.split() * 2) for words in WORDS.values()]


def _backbone_weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.trunk.get_layer("backbone").weights]


def _preset_weights(preset):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.Backbone.from_preset(preset)
    return [keras.ops.convert_to_numpy(w) for w in backbone.weights]


def _all_in(weights, pretrained):
    """Whether every weight is one of the pretrained ones, unchanged."""
    return all(
        any(w.shape == v.shape and np.array_equal(w, v) for v in pretrained) for w in weights
    )


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    """A text run on a keras-hub preset folder, trained through the CLI, and the preset."""
    keras_hub = pytest.importorskip("keras_hub")
    root = tmp_path_factory.mktemp("hub")
    preset = tiny_bert_preset(keras_hub, root / "preset", HUB_WORDS)
    make_documents(root / "train")
    make_documents(root / "test", per_class=6, seed=1)
    words = ["train", str(root / "train"), "--out", str(root / "run")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's empty, binary and Latin-1 files
        assert main([*words, "--text-trunk", "hub", "--backbone", preset, *HUB_TRAIN]) == 0
    return root, preset


@pytest.mark.slow
def test_cli_trains_a_hub_run_on_the_presets_frozen_backbone_and_tokenizer(hub_run):
    root, preset = hub_run
    run = root / "run"
    options = json.loads((run / "config.json").read_text())["options"]
    assert (options["text_trunk"], options["backbone"]) == ("hub", preset)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5 and metrics["baseline"]["flat"]["accuracy"] > 0.5
    assert metrics["macs_per_image"]["routed"] > 24 * 4 * 16 * 16  # the Transformer block
    model = keras.models.load_model(run / "model.keras", safe_mode=True)
    assert model.preprocessor.vocabulary_size() == len(HUB_WORDS) + 6  # the preset's own
    outputs = model.predict(KEYWORD_DOCUMENTS, verbose=0)  # cat, dog, bus, car
    assert (outputs["classes"].argmax(1) == [0, 1, 2, 3]).sum() >= 3  # a random tiny BERT
    shipped = _backbone_weights(model)
    assert shipped and _all_in(shipped, _preset_weights(preset))  # frozen while heads trained
    flat = keras.models.load_model(run / "baseline.keras", safe_mode=True)
    (backbone,) = [layer for layer in flat._flatten_layers() if layer.name == "backbone"]
    assert _all_in([keras.ops.convert_to_numpy(w) for w in backbone.weights], shipped)


@pytest.mark.slow
def test_a_hub_run_fine_tunes_the_top_of_its_backbone_when_asked(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    preset = tiny_bert_preset(keras_hub, tmp_path / "preset", HUB_WORDS)
    make_documents(tmp_path / "train", per_class=8)
    words = ["train", str(tmp_path / "train"), "--out", str(tmp_path / "run"), *HUB_TRAIN]
    words += ["--text-trunk", "hub", "--backbone", preset, "--epochs", "1", "--no-baseline"]
    words += ["--no-report", "--fine-tune-epochs", "1", "--fine-tune-layers", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*words, "--fine-tune-learning-rate", "0.01"]) == 0
    last = read_state(tmp_path / "run")["checkpoint"]  # model.keras: maybe the frozen epoch
    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / last, safe_mode=True)
    pretrained = _preset_weights(preset)
    backbone = model.trunk.get_layer("backbone")

    def weights_of(name):
        return [keras.ops.convert_to_numpy(w) for w in backbone.get_layer(name).weights]

    assert not _all_in(weights_of("transformer_layer_0"), pretrained)  # the top layer trained
    assert _all_in(weights_of("token_embedding"), pretrained)  # the layers below it did not


@pytest.mark.slow
def test_cli_predicts_evaluates_compares_and_describes_a_hub_run(hub_run, tmp_path, capsys):
    root, preset = hub_run
    run = str(root / "run")
    lines = tmp_path / "new.txt"
    lines.write_text("\n".join(KEYWORD_DOCUMENTS) + "\n")
    assert main(["predict", run, "--lines", str(lines), "--json", "--quiet"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    model = keras.models.load_model(root / "run" / "model.keras")
    outputs = model.predict(KEYWORD_DOCUMENTS, verbose=0)  # what the CLI should print
    classes, groups = [name for _, name in WORDS], ["animals", "vehicles"]
    assert [row["class"] for row in rows] == [classes[i] for i in outputs["classes"].argmax(1)]
    assert [row["expert"] for row in rows] == [groups[i] for i in outputs["route"]]
    assert main(["evaluate", run, str(root / "test"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.5
    assert main(["compare", run, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["backbone"] == f"hub: {preset} (text)"
    assert main(["info", run]) == 0
    assert "experts read {'animals': 'features'" in capsys.readouterr().out


@pytest.mark.slow
def test_a_hub_run_resumes_with_its_own_tokenizer(hub_run, tmp_path):
    root, _ = hub_run
    run = shutil.copytree(root / "run", tmp_path / "run")
    before = keras.models.load_model(run / "model.keras").preprocess(KEYWORD_DOCUMENTS)
    words = ["train", str(root / "train"), "--out", str(run), "--resume", "--epochs", "6"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*words, "--quiet"]) == 0
    history = (run / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3", "4", "5", "6"]
    after = keras.models.load_model(run / "model.keras").preprocess(KEYWORD_DOCUMENTS)
    np.testing.assert_array_equal(after, before)  # the same token ids


def test_train_refuses_a_hub_run_without_its_preset_before_writing(tmp_path, capsys):
    data = make_documents(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--text-trunk", "hub", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "name its preset with --backbone / backbone" in error and not run.exists()
