"""`hierarchy="auto"`: the groups of a flat folder, discovered for a run."""

import dataclasses
from pathlib import Path

from condnet.evaluation.discovery import discover_from_folder
from condnet.runs.files import DISCOVERED
from condnet.runs.finish import announce as _announce
from condnet.runs.run_config import resolve_learning_rate


def discover_for_run(options, data_dir, run_dir, fit_kwargs):
    """`hierarchy="auto"`: discover the groups of a flat folder for this run.

    A flat classifier trains on the run's data with the run's image size,
    epochs, batch size, filters, seed and validation share (0.2 when the run
    has none); its validation confusions are clustered into
    `discovery_groups` groups (`condnet.evaluation.discovery`). The hierarchy is written
    to `RUN_DIR/hierarchy.discovered.json` to edit and reuse with
    `--hierarchy FILE`; the returned options hold its dict instead of "auto", so
    `resume` keeps it. Only that grouping carries over to the run; since it
    reorders the classes, the run's validation rows (same share and seed)
    need not be the ones discovery held out.
    """
    _announce(
        f"=== Discovery: training a flat classifier for {options.epochs} epochs to find "
        f"{options.discovery_groups} groups of similar classes ===",
        fit_kwargs,
    )
    hierarchy, _ = discover_from_folder(
        data_dir,
        num_groups=options.discovery_groups,
        image_size=options.image_size,
        epochs=options.epochs,
        validation_split=options.validation_split or 0.2,
        seed=options.seed,
        batch_size=options.batch_size,
        filters=options.filters,
        learning_rate=resolve_learning_rate(options),
        color_mode=options.color_mode,
        **fit_kwargs,
    )
    hierarchy.save(Path(run_dir) / DISCOVERED)
    found = "; ".join(f"{g}: {', '.join(hierarchy.classes_of(g))}" for g in hierarchy.groups)
    _announce(
        f"Discovered groups: {found} (written to {Path(run_dir) / DISCOVERED}; edit it and "
        "pass --hierarchy FILE to reuse it).",
        fit_kwargs,
    )
    return dataclasses.replace(options, hierarchy=hierarchy.to_dict())
