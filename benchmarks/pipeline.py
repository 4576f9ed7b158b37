"""Routed predict with and without pipelining (front of batch i+1 during the experts of batch i).

    python benchmarks/pipeline.py [--backend tensorflow|jax|torch | --all-backends] [--quick]

The 4-expert model of `benchmarks/inference.py`, routed `predict` over the
same images, side by side in one process: `pipeline=True` (a worker thread
reads the next batch and runs its trunk and gate while the experts of the
current batch run) versus `pipeline=False` (one after the other), from numpy
arrays and from an `ImageFolder` (decoding from disk, no cache). Replaces
this backend's section of benchmarks/results/pipeline.md.
"""

import os
import tempfile

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()

import keras  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

from condnet.data.image_folder import ImageFolder  # noqa: E402
from condnet.models.dispatch import routed_predict  # noqa: E402


def _folder(images, batch_size, root):
    from PIL import Image

    paths = []
    for i, image in enumerate(images.astype("uint8")):
        path = os.path.join(root, f"{i:05d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    hierarchy = models.condnet.Hierarchy(models.HIERARCHIES[4])
    return ImageFolder(
        paths,
        np.zeros(len(paths), "int32"),
        hierarchy,
        image_size=(32, 32),
        batch_size=batch_size,
        cache=False,
    )


def main():
    args = common.parse_args(__doc__)
    backend = keras.backend.backend()
    count, repeats = (1024, 3) if args.quick else (2048, 5)
    images, _, source = data_sets.load_images(args.data, count, models.HIERARCHIES[4])
    model = models.conditional_model(4, routing="hard")
    models.balance_gate(model.gate, images)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for batch_size in (32, 256):
            folder = _folder(images, batch_size, root)
            functions = {
                f"{name} {mode}": (
                    lambda data=data, pipe=pipe, size=batch_size: routed_predict(
                        model, data, batch_size=size, verbose=0, pipeline=pipe
                    )
                )
                for name, data in (("arrays", images), ("ImageFolder", folder))
                for mode, pipe in (("pipelined", True), ("sequential", False))
            }
            timings = common.time_side_by_side(functions, repeats)
            speed = {k: count / v["median"] for k, v in timings.items()}
            for name in ("arrays", "ImageFolder"):
                on, off = speed[f"{name} pipelined"], speed[f"{name} sequential"]
                rows.append([name, batch_size, f"{on:.0f}", f"{off:.0f}", f"{on / off:.2f}x"])
            print(batch_size, {k: round(v) for k, v in speed.items()})
    table = common.markdown_table(
        [
            "input",
            "batch",
            "pipelined (images/s)",
            "sequential (images/s)",
            "pipelined / sequential",
        ],
        rows,
    )
    body = "\n".join([*common.machine(backend), f"- data: {source}", "", table, ""])
    common.write_section(f"Pipelined routed predict: {backend}", body, args.results)
    print(table)


if __name__ == "__main__":
    main()
