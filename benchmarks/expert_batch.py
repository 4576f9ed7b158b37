"""Routed predict against the flat CNN of equal MACs, by `expert_batch_size`.

    python benchmarks/expert_batch.py [--backend tensorflow|jax|torch] [--quick]

The 4-expert model of `benchmarks/inference.py` (gate balanced on CIFAR-10 test
images). For input batches of 32 and 256, times, side by side in one process,
`flat.predict` and `routed_predict(model, x, batch_size=b, expert_batch_size=N)`
for several N (the rows an expert's queue collects before it runs; the trunk and
gate run on inputs joined up to 256 rows, or N if fewer), and reports routed /
flat. It is the evidence for the default N per backend in
`condnet.models.dispatch` (`_EXPERT_ROWS`).
Replaces this backend's section of benchmarks/results/expert_batch.md.
"""

import os

import common
import data_sets

os.environ["KERAS_BACKEND"] = common.choose_backend()

import models  # noqa: E402
import numpy as np  # noqa: E402

from condnet.models.dispatch import routed_predict  # noqa: E402

BATCH_SIZES = (32, 256)
EXPERT_BATCH_SIZES = (128, 256, 512, 1024, 2048)


def main(argv=None):
    args = common.parse_args(__doc__, argv)
    count, repeats = (2048, 3) if args.quick else (4096, 5)
    images, _, source = data_sets.load_images(args.data, count, models.HIERARCHIES[4])
    model = models.conditional_model(4, routing="hard")
    model(images[:2])
    models.balance_gate(model.gate, images)
    gate_macs, expert_macs = models.macs_of(model)
    flat = models.flat_model(gate_macs + np.mean(list(expert_macs.values())))
    rows = []
    for batch_size in BATCH_SIZES:
        functions = {"flat": lambda b=batch_size: flat.predict(images, batch_size=b, verbose=0)}
        for n in EXPERT_BATCH_SIZES:
            functions[n] = lambda b=batch_size, n=n: routed_predict(
                model, images, batch_size=b, verbose=0, expert_batch_size=n
            )
        timings = common.time_side_by_side(functions, repeats)
        seconds = timings["flat"]["median"]
        ratios = [seconds / timings[n]["median"] for n in EXPERT_BATCH_SIZES]  # routed / flat
        rows.append(
            [str(batch_size), f"{len(images) / seconds:.0f}", *[f"{r:.2f}" for r in ratios]]
        )
        print(rows[-1], flush=True)
    table = common.markdown_table(
        ["batch", "flat images/s", *[f"routed / flat, N = {n}" for n in EXPERT_BATCH_SIZES]], rows
    )
    body = (
        f"`{common.command_line()}`: {len(images)} images ({source}), median of {repeats} "
        f"interleaved calls after a warm-up; routed = `routed_predict(..., "
        f"expert_batch_size=N)`, flat = the CNN of the MACs of gate + one expert.\n\n"
        + "\n".join(common.machine(os.environ["KERAS_BACKEND"]))
        + f"\n\n{table}\n"
    )
    print(body)
    common.write_section(f"Expert batch size: {os.environ['KERAS_BACKEND']}", body, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
