"""Small builders and checks shared by condnet's tests."""

import struct
import zlib

import keras
import numpy as np
from keras import layers, ops
from PIL import Image

from condnet.hierarchy import Hierarchy
from condnet.models.conditional_model import ConditionalModel


def fuzz_settings():
    """The hypothesis settings of the fuzz tests: reproducible by default (derandomized, no
    example database); `CONDNET_FUZZ_EXAMPLES=N` explores N random examples instead."""
    import os

    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=int(os.environ.get("CONDNET_FUZZ_EXAMPLES", "200")),
        deadline=None,
        database=None,
        derandomize="CONDNET_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


CATS_AND_DOGS = {"cat": ["persian", "siamese"], "dog": ["beagle", "pug", "boxer"]}


def mlp(units, input_dim=8, name=None, hidden=8, seed=0):
    """A tiny softmax classifier on a flat input."""
    inputs = keras.Input((input_dim,))
    hidden_layer = layers.Dense(
        hidden, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed)
    )
    outputs = layers.Dense(
        units, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(hidden_layer(inputs))
    return keras.Model(inputs, outputs, name=name)


def sign_gate(input_dim=8, sharpness=10.0, name="gate"):
    """A fixed gate: group 0 when x[:, 0] > 0, else group 1."""
    inputs = keras.Input((input_dim,))
    kernel = np.zeros((input_dim, 2), "float32")
    kernel[0] = [sharpness, -sharpness]
    dense = layers.Dense(2, activation="softmax", name=f"{name}_dense")
    outputs = dense(inputs)
    dense.set_weights([kernel, np.zeros(2, "float32")])
    return keras.Model(inputs, outputs, name=name)


def cats_and_dogs_model(routing="soft", gate=None, **kwargs):
    hierarchy = Hierarchy(CATS_AND_DOGS)
    return ConditionalModel(
        hierarchy,
        gate=gate or mlp(2, name="gate"),
        experts={"cat": mlp(2, name="cat", seed=2), "dog": mlp(3, name="dog", seed=4)},
        routing=routing,
        **kwargs,
    )


def random_data(num_samples=64, input_dim=8, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    return x, rng.integers(0, num_classes, num_samples).astype("int32")


def numpy_outputs(model, x, training=False):
    outputs = model(x, training=training)
    return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}


def assert_reload_equal(model, x, tmp_path, **predict_kwargs):
    """Save as .keras, load with safe_mode=True, compare predictions; return the copy."""
    path = tmp_path / "round_trip.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    before = model.predict(x, verbose=0, **predict_kwargs)
    after = loaded.predict(x, verbose=0, **predict_kwargs)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)
    if loaded.get_config()["hierarchy"] != model.get_config()["hierarchy"]:
        raise AssertionError("The reloaded model's hierarchy differs from the saved one.")
    return loaded


class RowCounter(layers.Layer):
    """Identity layer that counts the rows it has processed (in a variable)."""

    def build(self, input_shape):
        self.rows = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rows")

    def call(self, inputs):
        self.rows.assign_add(ops.cast(ops.shape(inputs)[0], "float32"))
        return inputs


def counted_mlp(units, input_dim=8, name=None, seed=0):
    """An mlp preceded by a RowCounter; returns (model, counter)."""
    inputs = keras.Input((input_dim,))
    counter = RowCounter(name=f"{name}_rows")
    outputs = mlp(units, input_dim, name=f"{name}_mlp", seed=seed)(counter(inputs))
    return keras.Model(inputs, outputs, name=name), counter


def loss_and_gradient_norm(model, x, y):
    """Training loss of one batch and the global L2 norm of its gradient, on any backend."""
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_loss_and_gradient_norm(model, x, y)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True), training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
    else:
        loss = model.compute_loss(x, y, model(x, training=True), training=True)
        loss.backward()
        gradients = [v.value.grad for v in model.trainable_variables]
    norms = [float(ops.convert_to_numpy(ops.sum(g * g))) for g in gradients if g is not None]
    return float(ops.convert_to_numpy(loss)), float(np.sqrt(sum(norms)))


def _jax_loss_and_gradient_norm(model, x, y):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_of(trainable):
        with keras.StatelessScope():  # metric updates inside compute_loss stay local
            y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return model.compute_loss(x, y, y_pred, training=True)

    loss, gradients = jax.value_and_grad(loss_of)(trainable)
    norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in gradients))
    return float(loss), float(norm)


# === Services on loopback, a headless browser ===


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def headless_chromium():
    """A Selenium Chrome driver on the system's Chromium, headless; skips the test (saying
    what to install) when Selenium, Chromium or its driver is missing. Close it with quit()."""
    import os

    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    browser = next((p for p in CHROMIUM if os.path.exists(p)), None)
    driver = next((p for p in CHROMEDRIVER if os.path.exists(p)), None)
    if browser is None or driver is None:
        pytest.skip("needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=driver), options=options
    )


def tiny_resnet_backbone(keras_hub):
    """A keras-hub ResNet backbone small enough for a test (two basic blocks)."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
    )


def ask_text_app(app, documents):
    """`(rows, model info)` a `serve` app answers to `POST /predict {"text": documents}`
    and `GET /model`, asked in process (httpx's ASGI transport, no socket)."""
    import asyncio

    import httpx

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            rows = await client.post("/predict", json={"text": documents})
            return rows.json(), (await client.get("/model")).json()

    return asyncio.run(ask())


BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_preset(keras_hub, directory, words, hidden_dim=16, max_sequence_length=64, seed=0):
    """A keras-hub BERT preset folder small enough for a test: a lower-casing WordPiece
    tokenizer over `words` (and the suffix "##s"), one Transformer block of `hidden_dim`
    (random weights drawn with `seed`). Returns the folder as a string."""
    keras.utils.set_random_seed(seed)
    vocabulary = [*BERT_SPECIAL_TOKENS, *sorted(set(words)), "##s"]
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(directory)
    keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_sequence_length,
    ).save_to_preset(directory)
    return str(directory)


# === Image folders ===

IMAGE_TREE = {"round": ["circle", "ring"], "angular": ["square"]}


def write_image(path, color=(200, 30, 30), size=(10, 12), format=None):
    """One plain-coloured RGB image of `size` (width, height) at `path`, folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=format)


def class_color(index):
    """The colour of the images of class `index` in `nested_images` and `flat_images`."""
    return (40 * index % 256, 255 - 30 * index % 256, 90)


def nested_images(root, tree=IMAGE_TREE, per_class=3, size=(10, 12)):
    """Writes root/<group>/<class>/<n>.png, one colour per class; returns `root`."""
    index = 0
    for group, classes in tree.items():
        for name in classes:
            for n in range(per_class):
                write_image(root / group / name / f"{n}.png", class_color(index), size)
            index += 1
    return root


def flat_images(root, classes=("circle", "ring", "square"), per_class=3):
    """Writes root/<class>/<n>.png, one colour per class; returns `root`."""
    for index, name in enumerate(classes):
        for n in range(per_class):
            write_image(root / name / f"{n}.png", class_color(index))
    return root


def truncated_jpeg(path):
    """A JPEG cut short: it passes the scan's verify() but fails to decode."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype="uint8")
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:1500])
    return path


def png_header(width, height):
    """A PNG that declares `width` x `height` pixels and holds none of them."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def serve_in_thread(config):
    """Run a `uvicorn.Config`'s server in a daemon thread. Returns (server, thread) once
    it listens: the server sets an event when its startup ends, so no test polls it.
    Stop it with `server.should_exit = True` and `thread.join()`."""
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            done.set()

    def run():
        try:
            server.run()
        finally:
            done.set()  # a server that failed to start ends its thread too

    done, server = threading.Event(), Server(config)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    done.wait(timeout=60)  # a safety net; startup takes well under a second
    if not server.started:
        raise RuntimeError(f"The test server did not start. Received: {config.host}:{config.port}")
    return server, thread
