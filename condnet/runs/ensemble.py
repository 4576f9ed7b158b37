"""`condnet ensemble`: finished runs averaged into one model, evaluated like a run."""

import json
from pathlib import Path

from condnet.runs.checkpoint import write_atomic
from condnet.runs.documents import refuse_text_run
from condnet.runs.files import BEST, CONFIG, METRICS
from condnet.runs.outputs import guard, staged_folder, training_data
from condnet.runs.run_dir import folder_for, input_shape_of, load_run


def build_ensemble(run_dirs, out, data_dir, batch_size=64, overwrite=False, progress=False):
    """Average the runs' models, score the ensemble and each member on `data_dir`, and
    write `out` as a run directory (`model.keras`, `config.json`, `metrics.json`, report)
    that `condnet evaluate`, `predict`, `serve` and `export` (keras) read.

    Every run must share the hierarchy, image size and colour mode; all of it is
    checked, and `out` must be new (or an ensemble condnet wrote, with `overwrite=True`)
    and outside the data and every run, before anything is written.
    Returns the metrics.
    """
    from condnet.evaluation.cost import routed_macs
    from condnet.evaluation.evaluate import evaluate_model
    from condnet.models.ensemble import Ensemble

    run_dirs, out = [Path(r) for r in run_dirs], Path(out)
    data = [data_dir, *training_data(run_dirs)]
    guard(out, "ensemble", data=data, reads=run_dirs, overwrite=overwrite)
    loaded = [load_run(run) for run in run_dirs]
    for run, (_, run_config) in zip(run_dirs, loaded):
        refuse_text_run(run, run_config, "ensemble")
    config = _shared_config(run_dirs, [config for _, config in loaded])
    members = [model for model, _ in loaded]
    for i, member in enumerate(members):
        member._name = f"member_{i}"  # one archive holds them all: names must differ
    ensemble = Ensemble(members[0].hierarchy, members)
    data = folder_for(members[0], config, data_dir, batch_size)
    scores = [
        evaluate_model(m, data, progress=f"member {i}" if progress else None)["accuracy"]
        for i, m in enumerate(members)
    ]
    metrics = evaluate_model(ensemble, data, progress="ensemble" if progress else None)
    shape = input_shape_of(config)[1:]  # every member runs: the costs add up
    metrics["members"] = [
        {"run": str(run), "accuracy": score, "routed_macs": routed_macs(member, shape)["routed"]}
        for run, score, member in zip(run_dirs, scores, members)
    ]
    metrics["gain_over_best_member"] = metrics["accuracy"] - max(scores)
    costs = routed_macs(ensemble, shape)
    metrics["macs_per_image"] = {"routed": costs["routed"], "all_experts": costs["all_experts"]}
    with staged_folder(out, "ensemble") as partial:
        _write(partial, ensemble, config, metrics, run_dirs, data_dir)
        _report(partial, ensemble, metrics, run_dirs, data_dir)
    return metrics


def _report(out, ensemble, metrics, run_dirs, data_dir):
    from condnet.evaluation.report import write_report

    write_report(
        out,
        ensemble.hierarchy,
        metrics,
        title=f"Ensemble of {len(run_dirs)} runs on {data_dir}",
        header={
            "members": ", ".join(str(r) for r in run_dirs),
            "data": f"{data_dir} ({metrics['num_samples']} images scored)",
            "gain over the best member": f"{metrics['gain_over_best_member']:+.4f}",
        },
    )


def _shared_config(run_dirs, configs):
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


def _write(out, ensemble, config, metrics, run_dirs, data_dir):
    from condnet.runs.checkpoint import save_model_atomic

    save_model_atomic(ensemble, out / BEST)
    config = {**config, "ensemble": {"members": [str(r) for r in run_dirs], "data": str(data_dir)}}
    write_atomic(out / CONFIG, json.dumps(config, indent=1) + "\n")
    write_atomic(out / METRICS, json.dumps(metrics, indent=1) + "\n")
