"""`condnet explain`: where the gate looked for its group and the expert for its class
(occlusion maps)."""

import json
import sys

from condnet.runs.cli.common import add_inference_flags, add_run_dir


def add_parser(commands, common):
    p = commands.add_parser(
        "explain",
        parents=[common],
        help="where the gate looked for its group and the expert for its class (occlusion maps)",
        description="For each image, slide a grey patch over it and record how much the gate's "
        "probability of its group and the chosen expert's probability of its class drop: "
        "OUT_DIR gets one PNG per image (the image, the gate's map, the expert's map) and "
        "explain.json (group, class, probabilities, the peak of each map).",
    )
    add_run_dir(p)
    p.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder to write")
    add_inference_flags(
        p,
        ("model",),
        helps={
            "model": "model.keras (default), model.calibrated.keras or the path of a .keras file"
        },
    )
    p.add_argument(
        "--patch-size",
        type=int,
        metavar="N",
        help="side of the grey patch in pixels of the model's input (default: a quarter "
        "of the image side)",
    )
    p.add_argument(
        "--stride", type=int, metavar="N", help="step between patches (default: half the patch)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="covered copies per call of the trunk, the gate or the expert (default 64)",
    )
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.explain import INDEX, explain_run, failed_images

    record = explain_run(
        args.run_dir,
        args.inputs,
        args.out,
        model_file=args.model,
        patch_size=args.patch_size,
        stride=args.stride,
        batch_size=args.batch_size,
    )
    for entry in record["images"]:
        if "error" not in entry:
            gate, expert = entry["gate_peak"], entry["expert_peak"]
            print(
                f"{json.dumps(entry['path'])}\t{entry['group']} ({entry['group_probability']:.3f})"
                f"\t{entry['class']} ({entry['class_probability']:.3f})\tgate peak at "
                f"({gate['row']}, {gate['column']})\texpert peak at "
                f"({expert['row']}, {expert['column']})"
            )
    failed = failed_images(record)
    print(f"Wrote {len(record['images']) - len(failed)} pictures and {INDEX} to {args.out}.")
    for entry in failed[:5]:
        print(f"condnet explain: {entry['path']!r}: {entry['error']}", file=sys.stderr)
    if failed:
        print(f"condnet explain: {len(failed)} image(s) could not be decoded.", file=sys.stderr)
        return 1
    return 0
