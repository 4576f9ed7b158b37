import argparse
import io
import tarfile

import data_sets
import pytest

GROUPS = {"pets": ["cat", "dog"], "farm": ["cow"]}


def _class_folders(root, files_per_class=3):
    for name in ("cat", "dog", "cow"):
        (root / name).mkdir(parents=True)
        for index in range(files_per_class):
            (root / name / f"{index:04d}.jpg").write_bytes(b"jpeg")
    return root


def test_link_first_nests_the_first_files_of_each_class_under_their_group(tmp_path):
    root = _class_folders(tmp_path / "train")
    target = data_sets.link_first(root, GROUPS, 2, tmp_path / "linked")
    linked = sorted(str(p.relative_to(target)) for p in target.rglob("*.jpg"))
    assert linked == [
        "farm/cow/0000.jpg",
        "farm/cow/0001.jpg",
        "pets/cat/0000.jpg",
        "pets/cat/0001.jpg",
        "pets/dog/0000.jpg",
        "pets/dog/0001.jpg",
    ]
    assert (target / "pets" / "cat" / "0000.jpg").samefile(root / "cat" / "0000.jpg")
    assert not (tmp_path / "linked.partial").exists()


def test_extract_first_takes_per_class_files_of_the_split_only(tmp_path, monkeypatch):
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as opened:
        for split in ("train", "test"):
            for name in ("cat", "dog", "cow"):
                for index in range(3):
                    member = tarfile.TarInfo(f"probe/{split}/{name}/{index}.jpg")
                    member.size = 4
                    opened.addfile(member, io.BytesIO(b"jpeg"))
    entry = {"archive": archive, "folder": "probe", "groups": GROUPS}
    monkeypatch.setitem(data_sets.DATA_SETS, "probe", entry)
    root = data_sets.extract_first("probe", "test", 2, tmp_path / "out")
    assert root == tmp_path / "out" / "probe" / "test"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg")) == [
        "cat/0.jpg",
        "cat/1.jpg",
        "cow/0.jpg",
        "cow/1.jpg",
        "dog/0.jpg",
        "dog/1.jpg",
    ]
    assert not (tmp_path / "out" / "probe" / "train").exists()


@pytest.mark.parametrize("name", data_sets.IMAGE_SETS)
def test_each_image_set_names_every_class_once(name):
    classes = [c for group in data_sets.DATA_SETS[name]["groups"].values() for c in group]
    assert len(classes) == len(set(classes))
    assert data_sets.default_left_out(data_sets.DATA_SETS[name]) == [
        sorted(group)[-1] for group in data_sets.DATA_SETS[name]["groups"].values()
    ]


@pytest.mark.parametrize(
    ("weight", "tag", "options"),
    [(None, "", {}), (0.0, "-outlier-0", {"outlier_loss_weight": 0.0})],
)
def test_an_outlier_weight_given_names_its_runs_and_reaches_condnet_train(weight, tag, options):
    args = argparse.Namespace(outlier_loss_weight=weight)
    assert data_sets.outlier_tag(args) == tag  # the default's runs keep their old names
    assert data_sets.outlier_options(args) == options
    assert bool(data_sets.outlier_words(args)) == (weight is not None)
