import argparse

import pytest
from defaults import seed_list


@pytest.mark.parametrize(
    "text, seeds", [("3", [0, 1, 2]), ("1", [0]), ("0,", [0]), ("0,2", [0, 2])]
)
def test_seeds_are_a_count_or_a_list(text, seeds):
    assert seed_list(text) == seeds


@pytest.mark.parametrize("text", ["0", ","])
def test_no_seed_at_all_is_refused_with_what_to_pass(text):
    with pytest.raises(
        argparse.ArgumentTypeError, match=f"'1' is seed 0.*Received: --seeds '{text}'"
    ):
        seed_list(text)
