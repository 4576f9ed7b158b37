"""`condnet extend`: grow a trained run with new groups or classes, training only what changed."""

import json
from pathlib import Path

from condnet.runs.cli.common import add_run_dir, add_verbosity_flags, group, verbosity
from condnet.runs.files import BEST


def add_parser(commands, common):
    p = commands.add_parser(
        "extend",
        parents=[common],
        help="grow a trained run with new groups or classes, training only what changed",
        description="Add the groups and classes of DATA_DIR to RUN_DIR's model: a new group "
        "gets a new expert and a gate output, a new class in a known group grows that "
        "group's expert (its old outputs copied). Only the gate and those experts train (and "
        "the trunk, see --train-trunk), on DATA_DIR and a replay sample of RUN_DIR's own "
        "training images; every other expert keeps its weights. Writes a complete run in "
        "NEW_RUN (RUN_DIR is only read), with the old classes' accuracy before and after in "
        "metrics.json.",
    )
    add_run_dir(p)
    p.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="folder of the new classes: DATA_DIR/<group>/<class>/* (a known group or a new "
        "one), or DATA_DIR/<class>/* with --hierarchy",
    )
    run = group(p, "run directory")
    run.add_argument("--out", required=True, metavar="NEW_RUN", help="run directory to write")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in NEW_RUN (its files are kept aside until the new run "
        "has committed its first epoch)",
    )
    run.add_argument(
        "--break-lock",
        action="store_true",
        help="remove a stale lock left in NEW_RUN by a condnet process that died",
    )
    data = group(p, "data")
    data.add_argument(
        "--hierarchy",
        metavar="FILE",
        help="JSON/YAML file naming the group of each class folder of a flat DATA_DIR",
    )
    data.add_argument(
        "--old-data",
        metavar="DIR",
        help="where RUN_DIR's training images are now, if they moved (default: the folder "
        "its config.json names)",
    )
    data.add_argument(
        "--validation-split",
        type=float,
        metavar="X",
        help="share of each new class held out to score it (default: RUN_DIR's)",
    )
    training = group(p, "training")
    training.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs of what trains: the gate, the changed experts and a trunk trained from "
        "scratch (default: RUN_DIR's)",
    )
    training.add_argument(
        "--replay",
        default="auto",
        metavar="N",
        help="old training images per old class to train beside the new ones (default: auto, "
        "as many as each new class has on average)",
    )
    training.add_argument(
        "--learning-rate", type=float, metavar="X", help="Adam's rate (default: RUN_DIR's)"
    )
    training.add_argument("--seed", type=int, metavar="N", help="seed (default: RUN_DIR's)")
    trunk = training.add_mutually_exclusive_group()
    trunk.add_argument(
        "--train-trunk",
        dest="train_trunk",
        action="store_const",
        const=True,
        default="auto",
        help="train the shared trunk in every case (default: trained when RUN_DIR trained it "
        "from scratch, frozen when it is a pretrained backbone; untouched experts keep their "
        "weights either way)",
    )
    trunk.add_argument(
        "--freeze-trunk",
        dest="train_trunk",
        action="store_const",
        const=False,
        help="keep the shared trunk frozen in every case (cheaper; see the default above)",
    )
    training.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="keep the new outputs as trained (default: offset their logits, chosen on the "
        "validation split by balanced accuracy, nearest 0 within one standard error of the "
        "best, so that new classes neither take old images nor answer too rarely)",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json's extend section")
    add_verbosity_flags(p)
    p.set_defaults(run=_run)


def _run(args):
    from condnet.runs.extend import extend

    replay = args.replay
    if replay != "auto":
        try:
            replay = int(replay)
        except ValueError:
            raise ValueError(
                "--replay takes auto or a number of images per old class. "
                f"Received: --replay {args.replay}"
            ) from None
    result = extend(
        args.run_dir,
        args.data_dir,
        args.out,
        epochs=args.epochs,
        replay=replay,
        seed=args.seed,
        hierarchy=args.hierarchy,
        validation_split=args.validation_split,
        learning_rate=args.learning_rate,
        train_trunk=args.train_trunk,
        balance=args.balance,
        old_data=args.old_data,
        overwrite=args.overwrite,
        break_lock=args.break_lock,
        verbose=verbosity(args),
    )
    section = result["metrics"]["extend"]
    if args.json:
        print(json.dumps(section))
        return
    old, new = section["old_classes"], section["new_classes_scores"]
    print(
        f"old classes: {_rate(old['accuracy_before'])} before, {_rate(old['accuracy_after'])} "
        f"after; new classes: {_rate(new['accuracy'])} ({section['seconds']:.0f} s) -> "
        f"{Path(args.out) / BEST}"
    )


def _rate(value):
    return "n/a" if value is None else f"{value:.4f}"
