"""`condnet info`: hierarchy, parameters and compute per route of a run."""

import json

from condnet.runs.cli.common import add_inference_flags, add_run_dir, inputs_noun


def add_parser(commands, common):
    p = commands.add_parser(
        "info", parents=[common], help="hierarchy, parameters and compute per route of a run"
    )
    add_run_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_inference_flags(p, ("model",))
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.run_dir import run_info

    info = run_info(args.run_dir, model_file=args.model)
    if args.json:
        print(json.dumps(info))
        return
    each = inputs_noun(args.run_dir)[:-1]  # image, or document for a text run
    print("Hierarchy:")
    for group, classes in info["hierarchy"].items():
        print(f"  {group}: {classes}")
    whole = f"none (the flat baseline runs whole on every {each})"
    print(f"Routing: {info['routing'] or whole}")
    print(f"{'part':<24}{'parameters':>14}{f'MACs / {each}':>16}")
    for part, count in info["parameters"].items():
        print(f"{part:<24}{count:>14,}{info['macs'][part]:>16,}")
    if info.get("model") == "baseline":
        return
    print(f"MACs per {each} by route (trunk + gate + one expert):")
    for group, macs in info["macs_per_route"].items():
        print(f"  {group:<22}{macs:>16,}")
    print(f"  {'all experts (soft)':<22}{info['macs_all_experts']:>16,}")
    if info.get("taps"):
        taps = info["taps"]
        print(f"Taps: gate reads {taps['gate']}; experts read {taps['experts']}")
        if taps["available"]:
            print(f"  stage outputs of the backbone: {', '.join(taps['available'])}")
