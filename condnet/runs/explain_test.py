import json

import keras
import numpy as np
import pytest
from PIL import Image

from condnet.evaluation.explain_test import HALF, SIDE, marked_image, quadrant_model
from condnet.runs.cli import main
from condnet.runs.explain import picture_name
from condnet.runs.outputs import MARKER, mark


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose model decides the group by the top-left quadrant and the class of
    `marked` by the bottom-right one (`quadrant_model`), and images to explain."""
    root = tmp_path_factory.mktemp("explain")
    run = root / "run"
    run.mkdir()
    quadrant_model().save(run / "model.keras")
    options = {"image_size": SIDE, "color_mode": "rgb", "data_dir": str(root / "data")}
    (run / "config.json").write_text(json.dumps({"options": options}))
    mark(run, "run", [])
    images = root / "images"
    images.mkdir()
    Image.fromarray(marked_image()).save(images / "marked.png")
    plain = marked_image()
    plain[:HALF, :HALF] = 0
    Image.fromarray(plain).save(images / "plain.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


def _index(out):
    return json.loads((out / "explain.json").read_text())


def test_explain_writes_a_picture_and_an_index_entry_per_image(run, tmp_path, capsys):
    out = tmp_path / "why"
    images = [str(run / "images" / "marked.png"), str(run / "images" / "plain.png")]
    assert main(["explain", str(run / "run"), *images, "--out", str(out)]) == 0
    index = _index(out)
    assert (index["image_size"], index["patch_size"], index["stride"]) == ([16, 16], [4, 4], [2, 2])
    marked, plain = index["images"]
    assert (marked["group"], marked["class"]) == ("marked", "bright")
    assert (plain["group"], plain["class"]) == ("plain", "dark")
    assert marked["gate_peak"]["x"] < 0.5 and marked["gate_peak"]["y"] < 0.5  # top-left
    assert marked["expert_peak"]["x"] > 0.5 and marked["expert_peak"]["y"] > 0.5  # bottom-right
    assert plain["expert_peak"]["x"] < 0.5 and plain["expert_peak"]["y"] < 0.5
    assert marked["group_probability"] == pytest.approx(0.982, abs=1e-3)
    assert [e["picture"] for e in index["images"]] == ["0000-marked.png", "0001-plain.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "0000-marked.png",
        "0001-plain.png",
        "explain.json",
    ]
    assert Image.open(out / "0000-marked.png").format == "PNG"
    printed = capsys.readouterr().out
    assert "marked (0.982)" in printed and "bright (0.982)" in printed
    assert "Wrote 2 pictures and explain.json" in printed


def test_explain_takes_folders_and_replaces_its_own_earlier_output(run, tmp_path):
    out = tmp_path / "why"
    assert main(["explain", str(run / "run"), str(run / "images"), "--out", str(out)]) == 0
    assert len(_index(out)["images"]) == 2
    one = str(run / "images" / "plain.png")
    assert main(["explain", str(run / "run"), one, "--out", str(out), "--patch-size", "8"]) == 0
    index = _index(out)
    assert [e["path"] for e in index["images"]] == [one] and index["patch_size"] == [8, 8]
    assert not (out / "0001-plain.png").exists()  # the old pictures went with the old index


def test_an_image_that_cannot_be_decoded_is_named_with_its_reason(run, tmp_path, capsys):
    out = tmp_path / "why"
    broken, good = str(run / "broken.png"), str(run / "images" / "marked.png")
    assert main(["explain", str(run / "run"), broken, good, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{broken!r}: cannot decode:" in error and "1 image(s) could not be decoded" in error
    first, second = _index(out)["images"]
    assert first["path"] == broken and first["error"].startswith("cannot decode: ")
    assert "picture" not in first and (out / second["picture"]).is_file()


@pytest.mark.parametrize(
    "words, message",
    [
        (["explain", "{root}/nowhere", "{root}/images"], "is not a finished condnet run"),
        (["explain", "{root}/run", "{root}/broken.png"], "None of the 1 images can be decoded"),
        (["explain", "{root}/run", "{root}/missing.png"], "No such image file or folder"),
        (["explain", "{root}/run", "{root}/images", "--patch-size", "40"], "patch_size must be"),
        (["explain", "{root}/run", "{root}/images", "--stride", "0"], "stride must be from 1"),
    ],
)
def test_explain_errors_say_what_and_write_nothing(run, tmp_path, capsys, words, message):
    out = tmp_path / "why"
    argv = [word.format(root=run) for word in words] + ["--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("condnet explain: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_flat_baseline_is_refused(run, tmp_path, capsys):
    flat = keras.Sequential([keras.Input((SIDE, SIDE, 3)), keras.layers.Flatten()])
    flat.add(keras.layers.Dense(4, activation="softmax"))
    flat.save(tmp_path / "baseline.keras")
    argv = ["explain", str(run / "run"), str(run / "images"), "--out", str(tmp_path / "why")]
    assert main([*argv, "--model", str(tmp_path / "baseline.keras")]) == 2
    assert "flat baseline has no gate and no experts to explain" in capsys.readouterr().err


def test_picture_names_are_unique_and_plain():
    assert picture_name(3, "/a/b/cat.jpg") == "0003-cat.png"
    assert picture_name(12, "/a/../é t?.png") == "0012-t.png"
    assert picture_name(5, "/a/my cat (2).jpeg") == "0005-my_cat_2.png"
    assert picture_name(0, "/a/....png") == "0000-image.png"
    assert np.unique([picture_name(i, "x/same.png") for i in range(3)]).size == 3


def test_evaluate_explains_the_misrouted_images_in_its_report(run, tmp_path):
    from condnet.runs.run_dir import evaluate_run

    images = {"bright": marked_image(), "dim": marked_image(), "dark": marked_image()}
    images["light"] = images["bright"].copy()  # a `plain` class, but its top-left is lit
    images["dim"][HALF:, HALF:] = 0
    images["dark"][:, :] = 0
    for name, image in images.items():
        group = "marked" if name in ("dim", "bright") else "plain"
        (tmp_path / "data" / group / name).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "data" / group / name / "0.png")
    report = tmp_path / "report"
    evaluate_run(run / "run", tmp_path / "data", report_dir=report)
    assert [p.name for p in (report / "examples").glob("why-*")] == ["why-misrouted-00.png"]
    assert "examples/why-misrouted-00.png" in (report / "report.md").read_text()
