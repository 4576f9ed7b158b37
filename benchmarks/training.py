"""Training throughput of one joint epoch: soft routing vs hard routing, capacity or dense dispatch.

    python benchmarks/training.py [--backend tensorflow|jax|torch | --all-backends] [--quick]

The 4-expert model of `benchmarks/inference.py` (equal CNN experts, a gate of
about 1/16 of an expert's MACs), built three times from the same seed and
trained on the same images with `model.compile()` and
`model.fit(x, y, epochs=1, batch_size=128)`:

- soft: `routing="soft"`, every expert runs on every row;
- capacity: `routing="hard", dispatch="capacity", capacity_factor=1.25`, each
  expert runs on a static buffer of ceil(1.25 * batch / K) rows;
- dense: `routing="hard", dispatch="dense"`, every expert runs, a one-hot selects.

The three models train in interleaved rounds of one epoch each: a warm-up
round (tracing, compiling), then the timed rounds; images/s is the median
over timed epochs, timed by a callback from epoch begin to epoch end. The
ideal speedup of capacity over soft is (G + K E) / (G + capacity_factor E)
in MACs. Prints a markdown table and replaces this backend's section of
benchmarks/results/training.md.
"""

import inspect
import math
import os
import statistics

import common
import data_sets

# Pick the backend before Keras is imported (--all-backends reruns this script per backend).
os.environ["KERAS_BACKEND"] = common.choose_backend()

import keras
import models
import numpy as np

import condnet

NUM_GROUPS = 4
BATCH_SIZE = 128
CAPACITY_FACTOR = 1.25
FULL = {"images": 2048, "epochs": 4}
QUICK = {"images": 1024, "epochs": 2}


def main():
    args = common.parse_args(__doc__)
    settings = QUICK if args.quick else FULL
    backend = keras.backend.backend()
    images, labels, source = data_sets.load_images(
        args.data, settings["images"], models.HIERARCHIES[4]
    )
    print(f"backend {backend}; data: {source}", flush=True)
    trained = train_side_by_side(configurations(), images, labels, settings["epochs"])
    gate_macs, expert_macs = models.macs_of(next(iter(trained.values()))["model"])
    groups = condnet.Hierarchy(models.HIERARCHIES[NUM_GROUPS]).class_to_group[labels]
    shares = models.route_shares(groups, NUM_GROUPS)
    body = report(trained, gate_macs, expert_macs, shares, backend, source, settings)
    print(body)
    heading = f"Training: {backend}" + (" (quick)" if args.quick else "")
    print(f"\nwrote section '{heading}' of {common.write_section(heading, body, args.results)}")


def configurations():
    """Name -> ConditionalModel keyword arguments; capacity only where condnet has it."""
    if "dispatch" not in inspect.signature(condnet.ConditionalModel).parameters:
        print("this condnet has no dispatch= argument: soft and hard (dense) only", flush=True)
        return {"soft": {"routing": "soft"}, "dense": {"routing": "hard"}}
    return {
        "soft": {"routing": "soft"},
        "capacity": {
            "routing": "hard",
            "dispatch": "capacity",
            "capacity_factor": CAPACITY_FACTOR,
        },
        "dense": {"routing": "hard", "dispatch": "dense"},
    }


# === Measurements ===


def train_side_by_side(configs, images, labels, epochs):
    """Train each configuration one epoch per round; the first round is the warm-up."""
    trained = {}
    for name, kwargs in configs.items():
        model = models.conditional_model(NUM_GROUPS, seed=0, **kwargs)  # same weights
        models.balance_gate(model.gate, images)
        model.compile()
        trained[name] = {"model": model, "timer": models.EpochTimer(), "kwargs": kwargs, "logs": {}}
    for round_ in range(1 + epochs):
        for name, run in trained.items():
            history = run["model"].fit(
                images, labels, epochs=1, batch_size=BATCH_SIZE, verbose=0,
                callbacks=[run["timer"]],
            )  # fmt: skip
            run["logs"] = {key: values[-1] for key, values in history.history.items()}
            print(f"  round {round_} {name}: {run['timer'].seconds[-1]:.2f} s", flush=True)
    for run in trained.values():
        run["seconds"] = statistics.median(run["timer"].seconds[1:])
        run["rate"] = len(images) / run["seconds"]
    return trained


# === Report ===


def report(trained, gate_macs, expert_macs, shares, backend, source, settings):
    expert = float(np.mean(list(expert_macs.values())))
    ideal = {
        "soft": 1.0,
        "capacity": (gate_macs + NUM_GROUPS * expert) / (gate_macs + CAPACITY_FACTOR * expert),
        "dense": 1.0,
    }
    soft = trained["soft"]["rate"]
    rows = []
    for name, run in trained.items():
        speedup = run["rate"] / soft
        dropped = run["logs"].get("dropped_rate")
        rows.append(
            [
                name,
                f"`{_arguments(run['kwargs'])}`",
                f"{run['rate']:.0f}",
                f"{run['seconds']:.2f}",
                f"{speedup:.2f}x",
                f"{ideal[name]:.2f}x",
                f"{100 * speedup / ideal[name]:.0f}%",
                "-" if dropped is None else f"{dropped:.3f}",
                f"{run['logs'].get('loss', float('nan')):.3f}",
            ]
        )
    headers = [
        "run", "ConditionalModel(...)", "images/s", "epoch (s)", "vs soft", "ideal",
        "% of ideal", "dropped_rate", "loss",
    ]  # fmt: skip
    lines = [
        *common.machine(backend),
        f"- data: {source}",
        f"- timing: {NUM_GROUPS} experts, `model.compile()` then `model.fit(x, y, epochs=1, "
        f"batch_size={BATCH_SIZE}, verbose=0)` per round; one warm-up round, then the median "
        f"of {settings['epochs']} timed epochs per run, rounds interleaved",
        f"- MACs per image (`count_macs`): gate G = {gate_macs:,}, expert E = {expert:,.0f}",
        "- true group shares of the images: "
        + " ".join(f"{share:.2f}" for share in shares)
        + f"; a capacity buffer holds ceil({CAPACITY_FACTOR} x {BATCH_SIZE} / {NUM_GROUPS}) = "
        + f"{math.ceil(CAPACITY_FACTOR * BATCH_SIZE / NUM_GROUPS)} rows per batch "
        + f"({CAPACITY_FACTOR / NUM_GROUPS:.0%}), so a gate that follows the labels overflows "
        + "on the largest group (those rows go to their next-best expert, or are dropped)",
        "",
        common.markdown_table(headers, rows),
        "",
        f"Ideal for capacity = (G + K E) / (G + capacity_factor E) = {ideal['capacity']:.2f}x "
        f"(K = {NUM_GROUPS}, capacity_factor = {CAPACITY_FACTOR}); soft and dense run every "
        "expert (ideal 1.00x). dropped_rate and loss: last epoch's logs.",
    ]
    if "capacity" not in trained:
        lines.append("\nThis condnet has no `dispatch=` argument: capacity was not run.")
    return "\n".join(lines)


def _arguments(kwargs):
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


if __name__ == "__main__":
    main()
