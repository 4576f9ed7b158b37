import numpy as np
import pytest

from condnet.data.checks import _check_indices, check_image_size, is_int


@pytest.mark.parametrize(
    "image_size, expected", [(48, (48, 48)), ((32, 64), (32, 64)), ([np.int64(8), 16], (8, 16))]
)
def test_check_image_size_gives_a_height_width_pair_of_ints(image_size, expected):
    size = check_image_size(image_size)
    assert size == expected and all(type(side) is int for side in size)


def test_is_int_takes_numpy_integers_and_not_bools():
    assert is_int(3) and is_int(np.int32(3))
    assert not is_int(True) and not is_int(3.0)


def test_check_indices_reads_a_boolean_mask_as_its_true_rows():
    np.testing.assert_array_equal(_check_indices([True, False, True], 3), [0, 2])
    with pytest.raises(ValueError, match=r"one entry per sample \(3\)"):
        _check_indices([True, False], 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\).*\[3\]"):
        _check_indices([0, 3], 3)
