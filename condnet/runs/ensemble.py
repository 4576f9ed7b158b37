"""`condnet ensemble`: finished runs averaged into one model, evaluated like a run.

The runs read images, or all read documents (text runs, `condnet.runs.documents`):
an ensemble of text runs scores a folder of documents, each member reading them
with its own vectorizer, and its run directory takes documents in `evaluate`,
`predict` and `serve` as a text run's does.
"""

import json
from pathlib import Path

from condnet.runs.checkpoint import write_atomic
from condnet.runs.documents import is_text_run
from condnet.runs.files import BEST, CONFIG, METRICS
from condnet.runs.outputs import guard, staged_folder, training_data
from condnet.runs.run_dir import folder_for, input_shape_of, load_run


def build_ensemble(run_dirs, out, data_dir, batch_size=64, overwrite=False, progress=False):
    """Average the runs' models, score the ensemble and each member on `data_dir`, and
    write `out` as a run directory (`model.keras`, `config.json`, `metrics.json`, report)
    that `condnet evaluate`, `predict`, `serve` and `export` (keras) read.

    Every run must share the hierarchy and the modality; image runs also the image size
    and colour mode. Text runs may differ in trunk, vocabulary and sequence length:
    `data_dir` is then a folder of documents, which each member reads with its own
    vectorizer (`condnet.models.ensemble.MemberVectorizers`). All of it is checked, and
    `out` must be new (or an ensemble condnet wrote, with `overwrite=True`) and outside
    the data and every run, before anything is written.
    `progress=True` reports each pass on standard error. Returns the metrics.
    """
    from condnet.evaluation.cost import routed_macs
    from condnet.evaluation.evaluate import evaluate_model
    from condnet.models.ensemble import Ensemble

    run_dirs, out = [Path(r) for r in run_dirs], Path(out)
    data = [data_dir, *training_data(run_dirs)]
    guard(out, "ensemble", data=data, reads=run_dirs, overwrite=overwrite)
    loaded = [load_run(run) for run in run_dirs]
    configs = [config for _, config in loaded]
    config = _shared_config(run_dirs, configs)
    members = [model for model, _ in loaded]
    ensemble = Ensemble(members[0].hierarchy, members)
    data = folder_for(ensemble, config, data_dir, batch_size)
    scores = [_accuracy(m, data, progress, f"member {i}") for i, m in enumerate(members)]
    metrics = evaluate_model(ensemble, data, progress=progress, progress_label="ensemble")
    shape = input_shape_of(config)[1:]  # every member runs: the costs add up
    metrics["members"] = [
        {"run": str(run), "accuracy": score, "routed_macs": macs}
        for run, score, macs in zip(run_dirs, scores, _member_costs(ensemble, shape))
    ]
    metrics["gain_over_best_member"] = metrics["accuracy"] - max(scores)
    costs = routed_macs(ensemble, shape)
    metrics["macs_per_image"] = {"routed": costs["routed"], "all_experts": costs["all_experts"]}
    with staged_folder(out, "ensemble") as partial:
        _write(partial, ensemble, config, metrics, run_dirs, data_dir)
        _report(partial, ensemble, metrics, run_dirs, data_dir)
    return metrics


def _accuracy(member, data, progress, label):
    """A member's accuracy on the ensemble's data: the same images, or the same documents
    read with the member's own vectorizer."""
    from condnet.data.text import TextFolder
    from condnet.evaluation.evaluate import evaluate_model

    if isinstance(data, TextFolder):
        vectorizer, size = member.preprocessor, data.batch_size
        data = TextFolder(
            data.texts, data.labels, data.hierarchy, vectorizer, size, paths=data.paths
        )
    return evaluate_model(member, data, progress=progress, progress_label=label)["accuracy"]


def _member_costs(ensemble, shape):
    """Each member's routed MACs per input of the ensemble (`shape`, no batch dimension)."""
    from condnet.evaluation.cost import routed_macs

    shapes = ensemble.member_input_shapes((None, *shape))
    return [routed_macs(m, s[1:])["routed"] for m, s in zip(ensemble.members, shapes)]


def _report(out, ensemble, metrics, run_dirs, data_dir):
    from condnet.evaluation.report import write_report

    documents = ensemble.preprocessor is not None
    write_report(
        out,
        ensemble.hierarchy,
        metrics,
        title=f"Ensemble of {len(run_dirs)} runs on {data_dir}",
        header={
            "members": ", ".join(str(r) for r in run_dirs),
            "data": f"{data_dir} ({metrics['num_samples']} "
            f"{'documents' if documents else 'images'} scored)",
            "gain over the best member": f"{metrics['gain_over_best_member']:+.4f}",
        },
        documents=documents,
    )


def _shared_config(run_dirs, configs):
    """The options of the ensemble's config.json: what it reads. Image runs must share
    their image size and colour mode; text runs give the ensemble all their token ids
    side by side (`sequence_length`: their sum, as `Ensemble.preprocessor` makes them)."""
    _check_modalities(run_dirs, configs)
    if is_text_run(configs[0]):
        length = sum(config["options"]["sequence_length"] for config in configs)
        return {"options": {"modality": "text", "sequence_length": length}}
    first = configs[0]["options"]
    for run, config in zip(run_dirs[1:], configs[1:]):
        for key in ("image_size", "color_mode"):
            if config["options"].get(key) != first.get(key):
                raise ValueError(
                    f"The runs take different inputs: {run_dirs[0]} has {key}="
                    f"{first.get(key)!r}, {run} has {config['options'].get(key)!r}. Ensemble "
                    "runs trained at the same image size and colour mode."
                )
    return {"options": {"image_size": first["image_size"], "color_mode": first["color_mode"]}}


def _check_modalities(run_dirs, configs):
    """Every run reads images, or every run reads documents."""
    text = [is_text_run(config) for config in configs]
    if len(set(text)) > 1:
        other = text.index(not text[0])
        inputs = {True: "documents (a text run)", False: "images"}
        raise ValueError(
            f"The runs read different inputs: {run_dirs[0]} was trained on {inputs[text[0]]}, "
            f"{run_dirs[other]} on {inputs[text[other]]}. An ensemble averages runs of one "
            "kind: pass only image runs, or only text runs. "
            f"Received: {[str(run) for run in run_dirs]}"
        )


def _write(out, ensemble, config, metrics, run_dirs, data_dir):
    from condnet.runs.checkpoint import save_model_atomic

    save_model_atomic(ensemble, out / BEST)
    config = {**config, "ensemble": {"members": [str(r) for r in run_dirs], "data": str(data_dir)}}
    write_atomic(out / CONFIG, json.dumps(config, indent=1) + "\n")
    write_atomic(out / METRICS, json.dumps(metrics, indent=1) + "\n")
