import importlib

import pytest

from condnet.data import folders

_HOMES = ("checks", "decode", "image_folder", "scan", "splits")


@pytest.mark.parametrize("name", folders.__all__)
def test_folders_names_are_the_objects_of_the_modules_they_moved_to(name):
    modules = [importlib.import_module(f"condnet.data.{home}") for home in _HOMES]
    holders = [module for module in modules if name in vars(module)]
    assert holders, f"{name} is in none of {_HOMES}"
    assert all(getattr(module, name) is getattr(folders, name) for module in holders)
