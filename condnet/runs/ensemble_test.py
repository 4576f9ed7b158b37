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
