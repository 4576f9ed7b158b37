"""Where a run's wall time goes: `RUN_DIR/timing.json` and a line of the report."""

import contextlib
import json
import time

from condnet.runs.files import TIMING

# The parts that train or score a model; everything else is the run's own cost.
MODEL_PARTS = ("fit", "flat baseline", "evaluation")


class RunTimes:
    """A stopwatch of named parts of one run (or of one resume).

    `part(name)` times a block; `add(name, seconds)` records time measured
    elsewhere (the checkpoints written inside `fit`), and `move(seconds, from_,
    to)` takes it out of the part that contained it. `summary()` gives the
    seconds per part, the wall time since the stopwatch started, the share
    of each part, and the share spent on neither training nor scoring a
    model (`overhead_share`).
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = {}

    @contextlib.contextmanager
    def part(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name, seconds):
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def move(self, seconds, from_, to):
        self.add(from_, -seconds)
        self.add(to, seconds)

    def summary(self):
        wall = time.perf_counter() - self.started
        parts = {name: round(s, 3) for name, s in self.seconds.items()}
        parts["other"] = round(max(0.0, wall - sum(self.seconds.values())), 3)
        model = sum(s for name, s in parts.items() if name.startswith(MODEL_PARTS))
        return {
            "wall_seconds": round(wall, 3),
            "parts": parts,
            "share": {name: round(s / wall, 4) if wall else 0.0 for name, s in parts.items()},
            "overhead_share": round(1 - model / wall, 4) if wall else 0.0,
            "note": "fit parts include each epoch's validation; checkpoints are taken out "
            "of them; overhead_share is everything that neither trains nor scores a model",
        }

    def write(self, run_dir):
        """Write `RUN_DIR/timing.json`; returns the summary."""
        from condnet.runs.checkpoint import write_atomic

        summary = self.summary()
        write_atomic(f"{run_dir}/{TIMING}", json.dumps(summary, indent=1) + "\n")
        return summary


def describe(summary):
    """One line for a report: the wall time and its largest parts."""
    wall = summary["wall_seconds"]
    parts = sorted(summary["parts"].items(), key=lambda item: -item[1])
    shown = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts if seconds >= 0.5)
    return f"{wall:.0f} s ({shown}); {summary['overhead_share']:.0%} trains no model"
