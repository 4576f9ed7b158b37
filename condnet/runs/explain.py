"""`condnet explain`: where a run's gate and chosen expert looked, one picture per image."""

import json
import re
from pathlib import Path

from condnet.data.decode import ImageDecodeError, decode_image
from condnet.evaluation.explain import (
    explain,
    occlusion_grid,
    render_explanation,
    summary_of,
)
from condnet.runs.documents import refuse_text_run
from condnet.runs.files import BEST
from condnet.runs.outputs import guard, staged_folder, training_data, write_file
from condnet.runs.run_dir import (
    FlatBaseline,
    _image_paths,
    _refuse_ensemble,
    input_shape_of,
    load_run,
)

KIND = "explanation"
INDEX = "explain.json"
_GRID = ("patch_size", "stride", "copies")


def explain_run(run_dir, inputs, out, model_file=None, patch_size=None, stride=None, batch_size=64):
    """Explain a run's decisions on images: a PNG per image and `explain.json` in `out`.

    Each image is decoded as the run decodes its data (its image size and colour
    mode), then `condnet.evaluation.explain.explain` maps where the gate looked
    for its group and where the chosen expert looked for its class;
    `render_explanation` draws both over the image. `out` passes the output
    guard (`condnet.runs.outputs`): never the run, its data or another run, and
    a folder is replaced only when an earlier `condnet explain` wrote it.

    Args:
        run_dir: a run directory from `condnet train`.
        inputs: image files or folders of images.
        out: the folder to write.
        model_file: the run's model to explain (`model.keras` by default, or
            `model.calibrated.keras`, or a path); the flat baseline has no gate.
        patch_size, stride, batch_size: those of `explain`, in pixels of the
            model's input.

    Returns:
        The index written to `explain.json`: the run, the grid, and one entry per
        image (`path`, `picture`, `group`, `group_probability`,
        `group_probabilities`, `class`, `class_probability`, `gate_peak`,
        `expert_peak`), or `{"path": ..., "error": "cannot decode: <reason>"}` for
        an image that cannot be decoded (a ValueError when none can).
    """
    model, config = load_run(run_dir, model_file=model_file)
    refuse_text_run(run_dir, config, "explain")
    paths = _image_paths(inputs)
    _refuse_unexplainable(run_dir, model, config)
    folders = [item for item in inputs if Path(item).is_dir()]
    guard(out, KIND, data=[*folders, *training_data([run_dir])], reads=[run_dir])
    shape = input_shape_of(config)[1:]
    patch, step = occlusion_grid(shape[:2], patch_size, stride)  # checked before any work
    options = config["options"]
    grid = dict(patch_size=patch, stride=step, batch_size=batch_size)
    entries = []
    with staged_folder(out, KIND) as partial:
        for index, path in enumerate(paths):
            entries.append(
                _explained(model, options, path, partial / picture_name(index, path), grid)
            )
        _check_some_decoded(entries)
        record = {
            "run": str(run_dir),
            "model": Path(model_file).name if model_file else BEST,
            "image_size": list(shape[:2]),
            "patch_size": list(patch),
            "stride": list(step),
            "images": entries,
        }
        write_file(partial / INDEX, json.dumps(record, indent=1) + "\n")
    return record


def _explained(model, options, path, picture, grid):
    """One image's entry in the index, its picture written to `picture`."""
    try:
        image = decode_image(
            path, image_size=options["image_size"], color_mode=options["color_mode"]
        )
    except ImageDecodeError as error:
        return {"path": str(path), "error": f"cannot decode: {error.reason}"}
    why = explain(model, image, **grid)
    render_explanation(image, why, picture, caption=Path(path).name)
    summary = {k: v for k, v in summary_of(why).items() if k not in _GRID}
    return {"path": str(path), "picture": picture.name, **summary}


def _check_some_decoded(entries):
    if all("error" in entry for entry in entries):
        shown = "; ".join(f"{e['path']!r}: {e['error']}" for e in entries[:2])
        raise ValueError(
            f"None of the {len(entries)} images can be decoded, so there is nothing to "
            f"explain. Check the files. Received: {shown}"
        )


def _refuse_unexplainable(run_dir, model, config):
    _refuse_ensemble(
        run_dir, model, config, "explain", "maps where one model's gate and experts looked"
    )
    if isinstance(model, FlatBaseline):
        raise ValueError(
            "The run's flat baseline has no gate and no experts to explain. Explain the "
            "run's conditional model: leave out --model (model.keras) or pass "
            f"model.calibrated.keras. Received: run_dir={str(run_dir)!r}, model=baseline.keras"
        )


def picture_name(index, path):
    """`0003-cat.png` for the fourth image `.../cat.jpg`: unique in the folder, and a
    name every file system takes."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60].strip("._") or "image"
    return f"{index:04d}-{stem}.png"


def failed_images(record):
    """The index's entries for images that could not be decoded."""
    return [entry for entry in record["images"] if "error" in entry]
