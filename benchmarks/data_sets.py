"""The labelled image sets that `backoff.py` and `unknown.py` train and test on, two groups each.

Each entry: the tarball in `../shared/data`, its folder inside it
(`<folder>/{train,test}/<class>/*.jpg`), the two-group hierarchy, the image
side the benchmarks train at, and the classes `unknown.py` leaves out by
default (the last class of each group in sorted order: the same rule on
every data set, not a choice per data set).
"""

import tarfile

import common

DATA = common.REPOSITORY.parent / "shared" / "data"
DATA_SETS = {
    "cifar10": {
        "archive": DATA / "cifar10-jpeg.tar.gz",
        "folder": "cifar10",
        "groups": {
            "vehicles": ["airplane", "automobile", "ship", "truck"],
            "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
        },
        "image_size": 32,
        "describe": "CIFAR-10 in two groups (vehicles, animals)",
    },
    "photos20": {
        "archive": DATA / "photos20-96px.tar.gz",
        "folder": "photos20",
        "groups": {
            "dogs": [
                "australian_terrier",
                "beagle",
                "border_terrier",
                "dingo",
                "english_foxhound",
                "english_springer",
                "golden_retriever",
                "old_english_sheepdog",
                "rhodesian_ridgeback",
                "samoyed",
                "shih_tzu",
            ],
            "things": [
                "cassette_player",
                "chain_saw",
                "church",
                "french_horn",
                "garbage_truck",
                "gas_pump",
                "golf_ball",
                "parachute",
                "tench",
            ],
        },
        "image_size": 48,
        "describe": "photos20 (Imagenette and Imagewoof photos) in two groups (dogs: 11 "
        "breeds, things: 9 classes)",
    },
}


def add_options(parser):
    """`--data-set` and `--image-size` (the data set's own side by default)."""
    parser.add_argument("--data-set", choices=sorted(DATA_SETS), default="cifar10")
    parser.add_argument(
        "--image-size", type=int, default=None, help="side in px (cifar10: 32, photos20: 48)"
    )


def resolve(args):
    """The chosen data set's entry; fills `args.image_size` and, where `--data` was left
    at its CIFAR-10 default, `args.data` with the data set's tarball."""
    data_set = DATA_SETS[args.data_set]
    if args.image_size is None:
        args.image_size = data_set["image_size"]
    if args.data == common.CIFAR:
        args.data = data_set["archive"]
    return data_set


def default_left_out(data_set):
    """The last class of each group in sorted order (CIFAR-10: truck, horse)."""
    return [sorted(classes)[-1] for classes in data_set["groups"].values()]


def extract(args, data_set):
    """The extracted `<folder>` (with `train/` and `test/`) in `args.cache`."""
    target = args.cache / data_set["folder"]
    if not target.is_dir():
        args.cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.data) as opened:
            opened.extractall(args.cache, filter="data")
    return target


def train_unless_reused(args, folder, run, seed):
    """`condnet train` on `folder` into `run` with the benchmark's settings, unless
    `--reuse` finds that run finished (its flat baseline written)."""
    from condnet.runs.files import BASELINE
    from condnet.runs.recipe import train

    if args.reuse and (run / BASELINE).is_file():
        return
    train(
        folder,
        run,
        epochs=args.epochs,
        seed=seed,
        image_size=args.image_size,
        overwrite=True,
        verbose=0 if args.quick else 2,
        tensorboard=False,
    )
