"""Image augmentation: named policies of Keras random layers, and a probe that picks one."""

import keras

from condnet.choices import AUGMENT_POLICIES

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# Below this side, "auto" without a probe augments nothing (see make_augmentation).
SMALL_IMAGE_SIZE = 32
_FACTORS = ("rotation", "zoom", "translation", "contrast")
_POLICIES = {
    "none": {},
    "light": {"translation": 0.05},
    "standard": {
        "flip": "horizontal",
        "rotation": 0.05,
        "zoom": 0.1,
        "translation": 0.08,
        "contrast": 0.1,
    },
    "strong": {
        "flip": "horizontal",
        "rotation": 0.1,
        "zoom": 0.2,
        "translation": 0.15,
        "contrast": 0.3,
    },
}


def make_augmentation(
    policy="auto",
    flip="auto",
    rotation="auto",
    zoom="auto",
    translation="auto",
    contrast="auto",
    image_size=None,
    seed=None,
):
    """A `keras.Sequential` of random image transformations for training.

    Put it first in a model (or pass it as `build_image_model(augmentation=)`):
    Keras's random preprocessing layers transform their inputs only when
    called with `training=True`, as in `fit`, and pass them through unchanged
    in `evaluate` and `predict`. Being plain Keras layers, it saves and loads
    with the model under `safe_mode`.

    A policy sets the factors; each argument given explicitly overrides its
    policy value, and 0 or `None` leaves that transformation out:

    | policy | flip | rotation | zoom | translation | contrast |
    |---|---|---|---|---|---|
    | `"none"` | - | - | - | - | - |
    | `"light"` | - | - | - | 0.05 | - |
    | `"standard"` | horizontal | 0.05 | 0.1 | 0.08 | 0.1 |
    | `"strong"` | horizontal | 0.1 | 0.2 | 0.15 | 0.3 |

    `"auto"` assumes no invariance it has not checked. Flips and rotations
    change orientation, and orientation carries the label in many datasets:
    traffic signs ("keep left" is a flipped "keep right"), digits and letters
    (6 and 9, b and d), arrows, text. So without a probe (`choose_augmentation`
    runs one) `"auto"` is `"light"`: a shift of at most 5% of the side, which
    only says where the object sits, for images of at least
    `SMALL_IMAGE_SIZE` (32) pixels a side; and `"none"` for smaller ones,
    which are nearly always centred crops (MNIST-like digits, sign crops) in
    which each pixel of shift is a large change, and on which the former
    default (flip, rotation, zoom, shift, contrast) cost about 8 points of
    accuracy. Without `image_size`, `"auto"` takes the images to be at
    least 32 pixels. Opt into flips with `flip="horizontal"` when mirrored
    images keep their class (most photos of objects and animals).

    Images are expected in [0, 255], as `ImageFolder` yields them (the
    contrast layer uses that value range). With every transformation off the
    result is a single `keras.layers.Identity`.

    Args:
        policy: string. One of `AUGMENT_POLICIES`. Defaults to `"auto"`.
        flip: `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"`,
            `None` or `False` (no flips), or `"auto"` (the policy's). Defaults
            to `"auto"`.
        rotation: float in [0, 1), 0, `None` or `"auto"`. Largest rotation
            either way, as a fraction of a full turn (0.05 is 18 degrees).
            Defaults to `"auto"`.
        zoom: float in [0, 1), 0, `None` or `"auto"`. Largest zoom in or out,
            as a fraction of the image size. Defaults to `"auto"`.
        translation: float in [0, 1), 0, `None` or `"auto"`. Largest shift
            either way, as a fraction of the image size. Defaults to `"auto"`.
        contrast: float in [0, 1), 0, `None` or `"auto"`. Largest contrast
            change, as a fraction. Defaults to `"auto"`.
        image_size: int or `(height, width)`. Size of the images, which
            `"auto"` decides by. Defaults to `None`.
        seed: int. Seed of the first layer; layer `i` gets `seed + i`, so the
            layers draw independently. Defaults to `None`.

    Returns:
        A `keras.Sequential` named "augmentation".

    Example:

    ```python
    augmentation = make_augmentation("standard", flip=None)  # no mirrored signs
    inputs = keras.Input((64, 64, 3))
    x = augmentation(inputs)
    ```
    """
    factors = dict(_POLICIES[resolve_policy(policy, image_size)])
    given = {
        "flip": flip,
        "rotation": rotation,
        "zoom": zoom,
        "translation": translation,
        "contrast": contrast,
    }
    factors.update({name: value for name, value in given.items() if not _is_auto(value)})
    _check_flip(factors.get("flip"))
    for name in _FACTORS:
        _check_factor(name, factors.get(name))
    return keras.Sequential(
        _layers(factors, seed) or [keras.layers.Identity()], name="augmentation"
    )


def resolve_policy(policy, image_size=None):
    """The policy `make_augmentation` applies: `"auto"` resolved by image size
    (`"none"` under `SMALL_IMAGE_SIZE` pixels a side, else `"light"`)."""
    if policy not in AUGMENT_POLICIES:
        raise ValueError(
            f"The augmentation policy must be one of {list(AUGMENT_POLICIES)}. "
            f"Received: policy={policy!r}"
        )
    if policy != "auto":
        return policy
    sides = (image_size,) * 2 if isinstance(image_size, int) else tuple(image_size or ())
    return "none" if sides and min(sides) < SMALL_IMAGE_SIZE else "light"


def choose_augmentation(
    build_model,
    train_data,
    validation_data,
    candidates=("none", "light"),
    epochs=2,
    metric="accuracy",
    image_size=None,
    seed=None,
    overrides=None,
    score=None,
    **fit_kwargs,
):
    """Picks the augmentation policy that validates best, by a short probe.

    For each candidate, builds a model with that policy's augmentation,
    trains it for `epochs` on `train_data` and scores it on
    `validation_data`. Each candidate starts from the same seed, so the
    scores differ by the augmentation alone. Make the probe cheap: a small
    copy of the model, few epochs, or `steps_per_epoch`. Ties go to the
    earlier candidate, so list the milder policies first.

    Args:
        build_model: callable. `build_model(augmentation)` returns a compiled
            Keras model that runs `augmentation` (a `keras.Sequential`) first.
        train_data: the training split: a dataset `model.fit` takes (a
            `tf.data.Dataset`, an `ImageFolder`) or an `(x, y)` tuple of arrays.
        validation_data: the validation split, likewise; never augmented.
        candidates: tuple of policy names (not `"auto"`). Defaults to
            `("none", "light")`.
        epochs: int. Epochs of training per candidate. Defaults to 2.
        metric: string. Key of `model.evaluate(..., return_dict=True)` to
            maximize. Defaults to `"accuracy"`.
        image_size: int or `(height, width)`. Passed to `make_augmentation`.
            Defaults to `None`.
        seed: int. Seed set before each candidate, and of its augmentation.
            Defaults to `None`.
        overrides: dict. Arguments of `make_augmentation` applied to every
            candidate, e.g. `{"flip": None}`. Defaults to `None`.
        score: callable. `score(model, validation_data)` returns the number
            to maximize, instead of `metric`. Defaults to `None`.
        **fit_kwargs: passed to `model.fit`, e.g. `steps_per_epoch`.

    Returns:
        A tuple `(policy, scores)`: the winning policy name and a dict of
        each candidate's score.

    Example:

    ```python
    def build(augmentation):
        model = build_image_model(hierarchy, image_size=32, augmentation=augmentation)
        model.compile()
        return model

    policy, scores = choose_augmentation(build, train, validation, epochs=2, image_size=32)
    augmentation = make_augmentation(policy, image_size=32)
    ```
    """
    _check_candidates(candidates)
    scores = {}
    for policy in candidates:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        augmentation = make_augmentation(
            policy, image_size=image_size, seed=seed, **(overrides or {})
        )
        model = build_model(augmentation)
        model.fit(*_arrays(train_data), epochs=epochs, verbose=0, **fit_kwargs)
        scores[policy] = float(
            score(model, validation_data) if score else _evaluate(model, validation_data, metric)
        )
    return max(candidates, key=lambda policy: scores[policy]), scores


# === Parts ===


def _layers(factors, seed):
    seeds = iter(range(seed, seed + 5) if seed is not None else [None] * 5)
    flip, rotation, zoom, translation, contrast = (
        factors.get(name) for name in ("flip", *_FACTORS)
    )
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=next(seeds)))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=next(seeds)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=next(seeds)))
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation, seed=next(seeds)))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, seed=next(seeds)))
    return layers


def _evaluate(model, validation_data, metric):
    results = model.evaluate(*_arrays(validation_data), return_dict=True, verbose=0)
    if metric not in results:
        raise ValueError(
            f"The probe model reports no metric '{metric}'; it reports {sorted(results)}. "
            "Compile it with that metric or pass metric= one of these. "
            f"Received: metric={metric!r}"
        )
    return results[metric]


def _arrays(data):
    return data if isinstance(data, tuple) else (data,)  # (x, y) arrays, or a dataset


def _check_candidates(candidates):
    if isinstance(candidates, str) or not candidates:
        raise ValueError(
            "candidates must be a non-empty tuple of policy names, e.g. ('none', 'light'). "
            f"Received: candidates={candidates!r}"
        )
    for policy in candidates:
        if policy == "auto" or policy not in AUGMENT_POLICIES:
            raise ValueError(
                f"Each candidate must be one of {list(AUGMENT_POLICIES[1:])} ('auto' is what "
                f"the probe decides). Received: candidates={tuple(candidates)!r}"
            )


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


def _check_flip(flip):
    if flip not in (None, False) and flip not in FLIP_MODES:
        raise ValueError(
            f"`flip` must be one of {FLIP_MODES}, None (no flips) or 'auto' (the "
            f"policy's). Received: flip={flip!r}"
        )


def _check_factor(name, factor):
    if factor is None:
        return
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise TypeError(
            f"`{name}` must be a float in [0, 1), 0 or None to leave it out, or 'auto' for "
            f"the policy's. Received: {name}={factor!r} of type {type(factor).__name__}"
        )
    if not 0 <= factor < 1:
        raise ValueError(
            f"`{name}` must be in [0, 1): the largest change as a fraction, e.g. "
            f"0.1. Use 0 or None to leave it out. Received: {name}={factor!r}"
        )
