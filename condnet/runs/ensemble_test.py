import json

import keras
import numpy as np
import pytest

from condnet.evaluation.cost import routed_macs
from condnet.evaluation.evaluate_test import colour_model, make_colour_folders
from condnet.runs.cli import main
from condnet.runs.outputs import MARKER
from condnet.runs.run_dir import predict_paths


def _run(folder, model, image_size=8):
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    options = {"image_size": image_size, "color_mode": "rgb"}
    (folder / "config.json").write_text(json.dumps({"options": options}))
    (folder / "metrics.json").write_text(json.dumps({"macs_per_image": {"routed": 1000}}))
    return folder


def _confused():
    """The colour model with its warm expert's outputs swapped: red <-> orange."""
    model = colour_model()
    warm = model.experts["warm"]
    kernel, bias = warm.get_weights()
    warm.set_weights([kernel[:, ::-1], bias[::-1]])
    return model


@pytest.fixture
def runs(tmp_path):
    data = make_colour_folders(tmp_path / "data", per_class=3)
    return data, _run(tmp_path / "exact", colour_model()), _run(tmp_path / "confused", _confused())


@pytest.mark.filterwarnings("error:You are saving a model that has not yet been built")
def test_an_ensemble_averages_its_members_and_is_a_run_directory(runs, tmp_path, capsys):
    data, exact, confused = runs
    out = tmp_path / "ensemble"
    assert (
        main(["ensemble", str(exact), str(confused), "--data", str(data), "--out", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["accuracy"] for m in metrics["members"]] == [1.0, 0.5]  # red, orange swapped
    assert metrics["gain_over_best_member"] == pytest.approx(metrics["accuracy"] - 1.0)
    member = routed_macs(colour_model(), (8, 8, 3))["routed"]  # counted, not read: 1000 above
    assert [m["routed_macs"] for m in metrics["members"]] == [member, member]
    assert metrics["macs_per_image"]["routed"] == 2 * member
    import condnet  # noqa: F401

    ensemble = keras.models.load_model(out / "model.keras", safe_mode=True)
    images = np.stack(
        [np.full((8, 8, 3), colour, "float32") for colour in [(250, 0, 0), (0, 0, 250)]]
    )
    members = [keras.models.load_model(r / "model.keras") for r in (exact, confused)]
    mean = np.mean([m.predict(images, verbose=0)["classes"] for m in members], axis=0)
    outputs = ensemble.predict(images, verbose=0)
    np.testing.assert_allclose(outputs["classes"], mean, atol=1e-6)
    warm = ensemble.hierarchy.group_slice("warm")
    np.testing.assert_allclose(
        outputs["groups"][:, 1], outputs["classes"][:, warm].sum(axis=1), atol=1e-6
    )
    rows = predict_paths(out, [str(data / "cool" / "blue")])  # works like any run
    assert {row["class"] for row in rows} == {"blue"}
    assert "over the best member" in capsys.readouterr().out


def test_ensemble_refuses_mismatched_runs_and_an_existing_out_before_writing(
    runs, tmp_path, capsys
):
    data, exact, _ = runs
    small = _run(tmp_path / "small", colour_model(image_size=16), image_size=16)
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(exact), str(small), "--data", str(data), "--out", str(out)]) == 2
    assert "different inputs" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    args = ["ensemble", str(exact), str(exact), "--data", str(data), "--out", str(out)]
    for flags in ([], ["--overwrite"]):  # a folder condnet did not write: never replaced
        assert main([*args, *flags]) == 2
        assert "condnet did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / "mine.txt").unlink()
    assert main([*args, "--quiet"]) == 0  # an empty folder is free
    capsys.readouterr()
    assert main([*args, "--quiet"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--quiet", "--overwrite"]) == 0
    inside = ["ensemble", str(exact), "--data", str(data), "--out"]
    for place in (exact / "ensemble", data / "cool" / "blue" / "ensemble", exact):
        assert main([*inside, str(place)]) == 2 and not place.joinpath(MARKER).exists()


# === Text runs ===


def _text_run(folder, model):
    """A run directory of a text model (hard-routed, as `condnet train` ships one)."""
    model.routing = "hard"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    length = model.preprocessor.get_config()["output_sequence_length"]
    options = {"modality": "text", "sequence_length": length}
    (folder / "config.json").write_text(json.dumps({"options": options}))
    (folder / "metrics.json").write_text(json.dumps({"macs_per_image": {"routed": 500}}))
    return folder


def _colour_documents(root, per_class=3):
    """root/<group>/<colour>/<n>.txt: posts of their colour's words."""
    from condnet.evaluation.evaluate_test import TREE
    from condnet.models.ensemble_test import POSTS

    for group, names in TREE.items():
        for name in names:
            (root / group / name).mkdir(parents=True)
            for n in range(per_class):
                words = POSTS[name].split()
                (root / group / name / f"{n}.txt").write_text(f"the {words[n]} and {words[-1]}\n")
    return root


@pytest.fixture
def text_runs(tmp_path):
    """Two text runs that read the documents differently (16 ids of a bag, 24 of a cnn),
    their models, and a folder of documents."""
    from condnet.models.ensemble_test import text_member

    members = [text_member(16, "bag", vocabulary_size=10), text_member(24, "cnn")]
    runs = [_text_run(tmp_path / member.name, member) for member in members]
    return _colour_documents(tmp_path / "documents"), runs, members


def test_an_ensemble_of_text_runs_scores_and_predicts_documents_as_its_members_mean(
    text_runs, tmp_path, capsys
):
    from condnet.data.text import read_documents, scan_documents

    data, runs, members = text_runs
    out = tmp_path / "ensemble"
    words = ["ensemble", *map(str, runs), "--data", str(data), "--out", str(out), "--quiet"]
    assert main([*words, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    hierarchy, paths, labels = scan_documents(data)
    texts, _ = read_documents(paths)
    member_classes = [m.predict(texts, verbose=0)["classes"] for m in members]
    accuracies = [float(np.mean(c.argmax(1) == labels)) for c in member_classes]
    assert [m["accuracy"] for m in metrics["members"]] == pytest.approx(accuracies)
    mean = np.mean(member_classes, axis=0)
    assert metrics["num_samples"] == 12
    assert metrics["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == labels)))
    config = json.loads((out / "config.json").read_text())
    assert config["options"] == {"modality": "text", "sequence_length": 40}
    assert "(12 documents scored)" in (out / "report.md").read_text()
    lines = tmp_path / "new.txt"
    lines.write_text("\n".join(texts) + "\n")
    assert main(["predict", str(out), "--lines", str(lines), "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["class"] for row in rows] == [hierarchy.classes[i] for i in mean.argmax(1)]
    confidences = [row["confidence"] for row in rows]
    np.testing.assert_allclose(confidences, mean.max(1), atol=1e-5)
    assert main(["evaluate", str(out), str(data), "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"])
    assert evaluated["num_samples"] == 12


def test_a_text_ensemble_is_served_as_a_text_run(text_runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from condnet.models.ensemble_test import DOCUMENTS
    from condnet.runs.deploy import serve_app
    from condnet.runs.ensemble import build_ensemble
    from condnet.testing import ask_text_app

    data, runs, members = text_runs
    build_ensemble(runs, tmp_path / "ensemble", data)
    app = serve_app(tmp_path / "ensemble")
    rows, info = ask_text_app(app, DOCUMENTS)
    mean = np.mean([m.predict(DOCUMENTS, verbose=0)["classes"] for m in members], axis=0)
    np.testing.assert_allclose([row["confidence"] for row in rows], mean.max(1), atol=1e-5)
    assert info["modality"] == "text" and info["input"] == {"sequence_length": 40}


def test_ensemble_refuses_an_image_run_and_a_text_run_naming_both(runs, text_runs, capsys):
    data, exact, _ = runs
    _, (text, _), _ = text_runs
    out = data.parent / "ensemble"
    assert main(["ensemble", str(exact), str(text), "--data", str(data), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"The runs read different inputs: {exact} was trained on images, {text} on " in line
    assert "documents (a text run)" in line and not out.exists()
