"""Exported artifacts that route: ONNX Runtime and TensorFlow, routed vs every expert.

    python benchmarks/export.py [--quick]

The model of `benchmarks/inference.py` with 4 equal CNN experts and a small gate
(its gate balanced so each expert gets about a quarter of the CIFAR-10 test
images), exported by `condnet.deploy.export.export_model`:

- routed: `routing="hard"`, each expert inside an `If` / `cond` on its own rows;
- all experts: `routing="soft"`, every expert on every row (what `model.export`
  of `call` costs: it also runs every expert);
- flat: a plain CNN with the MACs of gate + one expert (`flat_model`),
  exported by Keras's own `model.export`.

For each, images/s at batch 1, 32 and 256 in ONNX Runtime (CPU, the session's
default threads) and in TensorFlow (`tf.saved_model.load(...).serve`), measured
side by side in interleaved rounds, and the largest difference from
`model.predict` (hard routing). TensorFlow backend only (the export traces
TensorFlow graphs). Replaces the "Export" section of benchmarks/results/export.md.
"""

import os
import sys
import tempfile
from pathlib import Path

import common
import data_sets

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import models  # noqa: E402
import numpy as np  # noqa: E402

from condnet.choices import INFERENCE_ROUTINGS  # noqa: E402
from condnet.deploy.export import export_model  # noqa: E402

BATCH_SIZES = (1, 32, 256)
IMAGES = {1: 128, 32: 1024, 256: 2048}
TARGET = "at batch 32 in onnxruntime, routed >= 2x faster than the all-experts export (4 experts)"


def main(argv=None):
    args = common.parse_args(__doc__, argv)
    repeats = 3 if args.quick else 7
    images, _, source = data_sets.load_images(
        args.data, max(IMAGES.values()), models.HIERARCHIES[4]
    )
    model = models.conditional_model(4, routing="hard")
    model(images[:2])
    before, after = models.balance_gate(model.gate, images)
    gate_macs, expert_macs = models.macs_of(model)
    flat = models.flat_model(gate_macs + max(expert_macs.values()))
    flat(images[:2])
    expected = model.predict(images, batch_size=256, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        artifacts = _export_all(model, flat, folder)
        runners = _runners(artifacts)
        differences = _differences(runners, images, expected)
        speeds = _speeds(runners, images, repeats)
    result = {
        "source": source,
        "route_shares_before_balancing": before.round(3).tolist(),
        "route_shares": after.round(3).tolist(),
        "macs": {"gate": gate_macs, "experts": expert_macs, "flat": models.count_macs(flat)},
        "max_abs_difference_from_predict": differences,
        "images_per_second": speeds,
    }
    body = _markdown(result)
    print(body)
    variant = "quick" if args.quick else "full"
    heading = "Export: routed ONNX and SavedModel"
    common.write_results("export", variant, result, heading, body, args.results)
    return 0


def _export_all(model, flat, folder):
    artifacts = {}
    for routing in INFERENCE_ROUTINGS:
        name = "routed" if routing == "hard" else "all experts"
        artifacts[("onnx", name)] = export_model(
            model, folder / f"{routing}.onnx", "onnx", routing=routing
        )
        artifacts[("tensorflow", name)] = export_model(
            model, folder / f"{routing}-saved", "tf_saved_model", routing=routing
        )
    flat.export(str(folder / "flat.onnx"), format="onnx", verbose=False)
    flat.export(str(folder / "flat-saved"), format="tf_saved_model", verbose=False)
    artifacts[("onnx", "flat")] = folder / "flat.onnx"
    artifacts[("tensorflow", "flat")] = folder / "flat-saved"
    return artifacts


def _runners(artifacts):
    """{(runtime, name): function of a batch -> {"classes": array}}."""
    import onnxruntime
    import tensorflow as tf

    runners = {}
    for (runtime, name), path in artifacts.items():
        if runtime == "onnx":
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            runners[(runtime, name)] = _onnx_runner(session)
        else:
            loaded = tf.saved_model.load(str(path))
            runners[(runtime, name)] = _tf_runner(loaded, tf)
    return runners


def _onnx_runner(session):
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def run(x):
        outputs = dict(zip(output_names, session.run(None, {input_name: x})))
        return {"classes": outputs.get("classes", next(iter(outputs.values())))}

    return run


def _tf_runner(loaded, tf):
    def run(x):
        outputs = loaded.serve(tf.constant(x))
        if isinstance(outputs, dict) and "classes" in outputs:
            return {"classes": outputs["classes"].numpy()}
        value = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
        return {"classes": value.numpy()}

    return run


def _differences(runners, images, expected):
    """Largest |exported - predict| of the classes, per conditional artifact."""
    differences = {}
    for (runtime, name), run in runners.items():
        if name != "routed":
            continue
        worst = 0.0
        for b in BATCH_SIZES:
            got = np.concatenate(
                [run(images[i : i + b])["classes"] for i in range(0, min(len(images), 4 * b), b)]
            )
            worst = max(worst, float(np.abs(got - expected["classes"][: len(got)]).max()))
        differences[runtime] = worst
    return differences


def _speeds(runners, images, repeats):
    speeds = {}
    for b in BATCH_SIZES:
        x = images[: IMAGES[b]]
        batches = [x[i : i + b] for i in range(0, len(x), b)]
        functions = {
            f"{runtime}/{name}": (lambda run=run, batches=batches: [run(y) for y in batches])
            for (runtime, name), run in runners.items()
        }
        timed = common.time_side_by_side(functions, repeats, warmup=2)
        speeds[str(b)] = {k: round(len(x) / v["median"], 1) for k, v in timed.items()}
        print(f"batch {b}: {speeds[str(b)]}", flush=True)
    return speeds


def _markdown(result):
    rows = []
    for b, speeds in result["images_per_second"].items():
        for runtime in ("onnx", "tensorflow"):
            routed = speeds[f"{runtime}/routed"]
            everyone = speeds[f"{runtime}/all experts"]
            flat = speeds[f"{runtime}/flat"]
            rows.append(
                [
                    {"onnx": "onnxruntime", "tensorflow": "TensorFlow SavedModel"}[runtime],
                    b,
                    f"{routed:,.0f}",
                    f"{everyone:,.0f}",
                    f"{flat:,.0f}",
                    f"{routed / everyone:.2f}x",
                    f"{routed / flat:.2f}",
                ]
            )
    table = common.markdown_table(
        [
            "runtime",
            "batch",
            "routed (img/s)",
            "all experts (img/s)",
            "flat CNN, equal MACs (img/s)",
            "routed / all experts",
            "routed / flat",
        ],
        rows,
    )
    macs = result["macs"]
    experts = list(macs["experts"].values())
    ideal = (macs["gate"] + sum(experts)) / (macs["gate"] + experts[0])
    ort_32 = result["images_per_second"]["32"]
    ratio = ort_32["onnx/routed"] / ort_32["onnx/all experts"]
    verdict = "MET" if ratio >= 2.0 else "NOT MET"
    diffs = result["max_abs_difference_from_predict"]
    return (
        f"`{common.command_line()}`, {result['source']}; 4 experts of "
        f"{experts[0]:,} MACs, gate {macs['gate']:,} MACs (MAC ideal routed / all experts "
        f"{ideal:.2f}x), routes per expert {result['route_shares']}.\n\n{table}\n\n"
        f"Outputs of the routed artifacts against `model.predict` (hard routing), largest "
        f"absolute difference over batches of 1, 32 and 256: onnxruntime "
        f"{diffs['onnx']:.1e}, TensorFlow {diffs['tensorflow']:.1e}.\n\n"
        f"Target ({TARGET}): **{verdict}** ({ratio:.2f}x).\n"
    )


if __name__ == "__main__":
    sys.exit(main())
