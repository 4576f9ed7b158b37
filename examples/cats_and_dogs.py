"""Cats and dogs: a main model picks cat or dog, a conditional model picks the breed.

The architecture of the classic question, built with condnet:

- the main model is a conv stack `conv_01` .. `conv_04` with a cat/dog head;
- the conditional cat model branches from `conv_03`;
- the conditional dog model branches from `conv_02`.

It trains jointly with soft routing, then predicts with hard routing, so only
the chosen breed model runs for each image. The images are generated (two cat
breeds, three dog breeds, each a textured pattern on a tinted background), so
the example runs anywhere in under a minute on a laptop CPU.

    python examples/cats_and_dogs.py
"""

import argparse

import keras
import numpy as np
from keras import layers

import condnet

HIERARCHY = {"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]}


# === Data: one textured pattern per breed, a tint per animal ===


def breed_image(breed, rng, size=32):
    """Draw one image of a breed as a (size, size, 3) uint8 array."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase, frequency = rng.uniform(0, 2 * np.pi), rng.uniform(5, 8)
    pattern = {
        "persian": np.sin(2 * np.pi * frequency * yy + phase),  # horizontal stripes
        "siamese": np.sin(2 * np.pi * frequency * xx + phase),  # vertical stripes
        "beagle": np.sin(2 * np.pi * frequency * (xx + yy) / 2 + phase),  # diagonal
        "pug": np.sign(np.sin(2 * np.pi * 4 * xx) * np.sin(2 * np.pi * 4 * yy)),  # checks
        "boxer": np.cos(2 * np.pi * frequency * np.hypot(xx - 0.5, yy - 0.5) + phase),  # rings
    }[breed]
    is_cat = breed in HIERARCHY["cat"]
    tint = np.array([0.8, 0.5, 0.3]) if is_cat else np.array([0.3, 0.5, 0.8])
    tint = np.clip(tint + rng.normal(0, 0.1, 3), 0, 1)
    image = 0.5 + 0.35 * pattern[..., None] * tint + rng.normal(0, 0.12, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype("uint8")


def make_images(hierarchy, samples, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, hierarchy.num_classes, samples).astype("int32")
    images = np.stack([breed_image(hierarchy.classes[i], rng) for i in labels])
    return images.astype("float32"), labels


# === Models: the question's architecture ===


def main_model(input_shape=(32, 32, 3)):
    """The shared conv stack conv_01 .. conv_04 (the main model's trunk)."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    for i, filters in enumerate((16, 16, 32, 32), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(name=f"conv_0{i}")(x)
    return keras.Model(inputs, x, name="main_model")


def head(input_shape, num_classes, name):
    """A small classifier on a tap of the trunk: the gate or one breed model."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def build_model():
    trunk = main_model()
    shape = {
        name: trunk.get_layer(name).output.shape[1:] for name in ("conv_02", "conv_03", "conv_04")
    }
    return condnet.ConditionalModel(
        HIERARCHY,
        trunk=trunk,
        gate=head(shape["conv_04"], 2, "cat_or_dog"),  # the main model's head
        experts={
            "cat": head(shape["conv_03"], 2, "cat_breeds"),  # branches from conv_03
            "dog": head(shape["conv_02"], 3, "dog_breeds"),  # branches from conv_02
        },
        gate_tap="conv_04",
        expert_taps={"cat": "conv_03", "dog": "conv_02"},
        routing="soft",  # train the mixture jointly
    )


def main(epochs=6, samples=1500, seed=0, verbose=1):
    keras.utils.set_random_seed(seed)
    hierarchy = condnet.Hierarchy(HIERARCHY)
    x_train, y_train = make_images(hierarchy, samples, seed)
    x_test, y_test = make_images(hierarchy, 300, seed + 1)

    model = build_model()
    model.compile()  # Adam, gate + class + per-expert losses
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=0.1, verbose=verbose)

    model.routing = "hard"  # inference: only the chosen breed model runs
    outputs = model.predict(x_test, verbose=0)
    accuracy = float((outputs["classes"].argmax(1) == y_test).mean())
    group_accuracy = float((outputs["route"] == hierarchy.group_labels(y_test)).mean())
    for i in range(5):
        group = hierarchy.groups[outputs["route"][i]]
        print(
            f"image {i}: true {hierarchy.classes[y_test[i]]:8s} -> routed to the {group} "
            f"model (p={outputs['groups'][i].max():.2f}) -> "
            f"{hierarchy.classes[outputs['classes'][i].argmax()]}"
        )
    print(f"hard-routed accuracy: {accuracy:.3f}, cat/dog accuracy: {group_accuracy:.3f}")
    return {"accuracy": accuracy, "group_accuracy": group_accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    parser.add_argument("--samples", type=int, default=1500, help="training images (default 1500)")
    args = parser.parse_args()
    main(epochs=args.epochs, samples=args.samples)
