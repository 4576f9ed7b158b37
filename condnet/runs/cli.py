"""The `condnet` command line: train, evaluate, predict, info, demo, cv, calibrate."""

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None):
    """Entry point of the `condnet` console script."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, TypeError, RuntimeError, ImportError) as error:
        print(f"condnet {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="condnet",
        description="Conditional neural networks for Keras 3: a gate routes each image "
        "to the expert of its group. Backend: KERAS_BACKEND (default tensorflow).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(commands)
    _evaluate_parser(commands)
    _predict_parser(commands)
    _info_parser(commands)
    _demo_parser(commands)
    _cv_parser(commands)
    _calibrate_parser(commands)
    return parser


# === train ===


def _train_parser(commands):
    p = commands.add_parser(
        "train",
        help="train a conditional model on a folder of images",
        description="Train on DATA_DIR (root/<group>/<class>/* or "
        "root/<class>/* with --hierarchy) and write RUN_DIR.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    _add_training_options(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last completed epoch",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    p.set_defaults(run=_train)


def _add_training_options(p, validation_split=True):
    p.add_argument(
        "--hierarchy",
        metavar="FILE",
        help="JSON/YAML file mapping group -> classes (for flat folders), or 'auto' to "
        "discover the groups from the classes a flat classifier confuses (written to "
        "RUN_DIR/hierarchy.discovered.json, to edit and reuse)",
    )
    p.add_argument(
        "--discovery-groups",
        type=int,
        default=2,
        metavar="N",
        help="number of groups --hierarchy auto discovers (default 2)",
    )
    p.add_argument(
        "--routing",
        default="soft",
        choices=["soft", "hard", "gumbel", "teacher"],
        help="routing while training and at inference (default: soft)",
    )
    p.add_argument(
        "--strategy",
        default="joint",
        choices=["joint", "staged"],
        help="joint: one model, one loss; staged: gate, then experts, then joint (default: joint)",
    )
    p.add_argument(
        "--backbone",
        default="small_cnn",
        help="small_cnn (from scratch) or MobileNetV3Small, EfficientNetB0, "
        "ResNet50, VGG16 (default: small_cnn)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="pretrained backbone weights: 'imagenet' or a weights file "
        "(default: none, train from scratch)",
    )
    p.add_argument(
        "--expert-placement",
        default="auto",
        choices=["auto", "branch", "taps", "top", "separate"],
        help="where experts branch: branch (small_cnn only: each expert owns the last "
        "block), taps (an earlier stage), top (shared trunk), separate (own CNNs) "
        "(default: auto = branch for small_cnn, taps for pretrained backbones)",
    )
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument(
        "--color-mode",
        default="rgb",
        choices=["rgb", "grayscale"],
        help="read images as RGB or grayscale (default: rgb)",
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument(
        "--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)"
    )
    if validation_split:
        p.add_argument(
            "--validation-split",
            type=float,
            default=0.2,
            help="share of each class held out for validation (default 0.2)",
        )
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="turn off flip/rotation/zoom/translation/contrast augmentation",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=0,
        help="epochs of fine-tuning the unfrozen top of a pretrained backbone (default 0)",
    )
    p.add_argument(
        "--fine-tune-layers",
        type=int,
        default=20,
        help="top backbone layers to unfreeze when fine-tuning (default 20)",
    )
    p.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=1e-5,
        help="learning rate when fine-tuning (default 1e-5)",
    )
    p.add_argument(
        "--loss-schedule",
        default=None,
        choices=["coarse_to_fine"],
        help="change loss weights over epochs: gate first, then classes",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="epochs without validation improvement before stopping (default 5)",
    )
    p.add_argument(
        "--tensorboard", action="store_true", help="write TensorBoard logs to RUN_DIR/logs"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_options(args):
    return dict(
        hierarchy=args.hierarchy,
        routing=args.routing,
        strategy=args.strategy,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=getattr(args, "validation_split", None),
        seed=args.seed,
        learning_rate=args.learning_rate,
        expert_placement=args.expert_placement,
        augment=args.augment,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_layers=args.fine_tune_layers,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        loss_schedule=args.loss_schedule,
        patience=args.patience,
        tensorboard=args.tensorboard,
        color_mode=args.color_mode,
        discovery_groups=args.discovery_groups,
    )


def _train(args):
    from condnet.evaluation.report import summary_table
    from condnet.runs.recipe import train

    result = train(
        args.data_dir,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        verbose=0 if args.quiet else "auto",
        **_train_options(args),
    )
    print(summary_table(result["metrics"]))
    print(f"Run written to {args.out} (model.keras, report.md, history.csv).")


# === evaluate, predict, info ===


def _evaluate_parser(commands):
    p = commands.add_parser(
        "evaluate",
        help="metrics of a trained run on another folder",
        description="Evaluate RUN_DIR on DATA_DIR (same groups and classes).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of images, e.g. a test split")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--report-dir", default=None, help="where to write the report (default RUN_DIR/evaluation)"
    )
    p.set_defaults(run=_evaluate)


def _evaluate(args):
    from condnet.evaluation.report import summary_table
    from condnet.runs.run_dir import evaluate_run

    metrics = evaluate_run(args.run_dir, args.data_dir, report_dir=args.report_dir)
    print(json.dumps(metrics) if args.json else summary_table(metrics))


def _predict_parser(commands):
    p = commands.add_parser("predict", help="predict the group and class of images")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+", help="image files or folders")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=_predict)


def _predict(args):
    from condnet.runs.run_dir import predict_paths

    for row in predict_paths(args.run_dir, args.inputs):
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['path']}\t{row['group']}\t{row['class']}\t{row['confidence']:.3f}")


def _info_parser(commands):
    p = commands.add_parser("info", help="hierarchy, parameters and compute per route of a run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=_info)


def _info(args):
    from condnet.runs.run_dir import run_info

    info = run_info(args.run_dir)
    if args.json:
        print(json.dumps(info))
        return
    print("Hierarchy:")
    for group, classes in info["hierarchy"].items():
        print(f"  {group}: {classes}")
    print(f"Routing: {info['routing']}")
    print(f"{'part':<24}{'parameters':>14}{'MACs / image':>16}")
    for part, count in info["parameters"].items():
        print(f"{part:<24}{count:>14,}{info['macs'][part]:>16,}")
    print("MACs per image by route (trunk + gate + one expert):")
    for group, macs in info["macs_per_route"].items():
        print(f"  {group:<22}{macs:>16,}")
    print(f"  {'all experts (soft)':<22}{info['macs_all_experts']:>16,}")


# === demo ===


def _demo_parser(commands):
    p = commands.add_parser(
        "demo",
        help="generate the shapes data set, train, evaluate, report",
        description="The whole workflow on an embedded data set of drawn "
        "shapes (round: circle/ellipse/ring; angular: triangle/square/star).",
    )
    p.add_argument(
        "--out",
        default="condnet-demo",
        metavar="RUN_DIR",
        help="where to write the data and the run (default ./condnet-demo)",
    )
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    p.add_argument(
        "--samples-per-class", type=int, default=300, help="training images per class (default 300)"
    )
    p.add_argument(
        "--routing",
        default="soft",
        choices=["soft", "hard", "gumbel", "teacher"],
        help="routing mode (default: soft)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_demo)


def _demo(args):
    from condnet.runs.demo import run_demo

    run_demo(
        Path(args.out),
        epochs=args.epochs,
        samples_per_class=args.samples_per_class,
        routing=args.routing,
        verbose=0 if args.quiet else "auto",
    )


# === cv, calibrate ===


def _cv_parser(commands):
    p = commands.add_parser(
        "cv",
        help="stratified K-fold cross-validation of the training recipe",
        description="Train one run per fold of DATA_DIR (each image validated once) in "
        "OUT_DIR/fold-K/, then write OUT_DIR/cv.json and print mean ± std.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of images")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for the fold runs")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    _add_training_options(p, validation_split=False)
    p.add_argument("--overwrite", action="store_true", help="replace runs already in OUT_DIR")
    p.set_defaults(run=_cv)


def _cv(args):
    from condnet.runs.cross_validation import cross_validate, summary_table

    options = _train_options(args)
    del options["validation_split"]
    summary = cross_validate(
        args.data_dir,
        args.out,
        folds=args.folds,
        overwrite=args.overwrite,
        verbose=0 if args.quiet else "auto",
        **options,
    )
    print(summary_table(summary))
    print(f"Cross-validation written to {args.out}/cv.json (runs in fold-1 ... fold-{args.folds}).")


def _calibrate_parser(commands):
    p = commands.add_parser(
        "calibrate",
        help="fit gate and expert temperatures on a run's validation split",
        description="Temperature-scale RUN_DIR's model on its validation split (drawn "
        "again from config.json); write model.calibrated.keras and calibration.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory from `condnet train`")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=_calibrate)


def _calibrate(args):
    from condnet.runs.run_dir import calibrate_run

    report = calibrate_run(args.run_dir)
    if args.json:
        print(json.dumps(report))
        return
    temperatures = report["temperatures"]
    print(f"Temperatures: gate {temperatures['gate']:.3f}, experts {temperatures['experts']:.3f}")
    print(f"{'level':<8}{'ECE before':>12}{'ECE after':>12}")
    for level in ("group", "class"):
        before = report["before"]["expected_calibration_error"][level]
        after = report["after"]["expected_calibration_error"][level]
        print(f"{level:<8}{before:>12.4f}{after:>12.4f}")
    print(f"Calibrated model written to {Path(args.run_dir) / report['model']}.")


if __name__ == "__main__":
    sys.exit(main())
