"""The names an option may take, in a module that imports nothing heavy.

The command line builds its parser (and `condnet --help` answers) from these
without importing Keras; the modules that implement each choice import them
from here.
"""

COLOR_MODES = ("rgb", "grayscale")
# The largest image side, in pixels: larger images need gigabytes of memory per batch. The
# smallest is the backbone's (small_cnn: 2 ** blocks, 8 by default; an application: 32).
MAX_IMAGE_SIDE = 2048
ROUTINGS = ("soft", "hard", "gumbel", "teacher")
# What a trained model may run at inference (predict, evaluate, serve, export): hard runs the
# chosen expert only, soft mixes every expert.
INFERENCE_ROUTINGS = ("hard", "soft")
DISPATCHES = ("dense", "capacity")  # how hard routing runs while training
STRATEGIES = ("joint", "staged")
STAGED_MIN_EPOCHS = 2  # staged: one epoch for the gate, then one for the experts
AUGMENT_POLICIES = ("auto", "none", "light", "standard", "strong")
SMALL_CNN_FILTERS = (32, 64, 128)
PLACEMENTS = ("auto", "branch", "heads", "taps", "top", "separate")
PREPROCESS_MODES = ("none", "unit", "symmetric", "caffe", "torch")
EXPORT_FORMATS = ("onnx", "tf_saved_model", "keras")
DISTRIBUTE = ("auto", "none", "data-parallel")
LR_SCHEDULES = ("cosine", "plateau")
CACHE_POLICIES = ("auto", "memory", "disk", "none")
# "hub": a pretrained keras-hub text backbone preset (`--backbone PRESET`) with its own
# tokenizer, instead of a trunk trained from scratch on the run's own vocabulary.
HUB_TEXT_TRUNK = "hub"
TEXT_TRUNKS = ("bag", "cnn", "gru", "transformer", HUB_TEXT_TRUNK)
MODALITIES = ("auto", "image", "text")
# What `condnet train` reads documents with by default: the bag trunk, the first 256
# words of each document, the 20,000 most frequent words of the training split (the Keras
# text example's size): the most accurate trunk for its cost on 20 Newsgroups, and sizes
# within the seed spread of each other (benchmarks/text_news20.py; figures in
# benchmarks/RESULTS.md).
TEXT_DEFAULTS = {"text_trunk": "bag", "sequence_length": 256, "vocabulary_size": 20000}
# How an expert scores "a class of my group I do not know" (`condnet unknown --score`).
UNKNOWN_SCORES = ("gated_energy", "energy", "mahalanobis", "softmax")
# `condnet tune`: KerasTuner's search algorithms, and what a search maximises.
TUNERS = ("random", "bayesian", "hyperband")
TUNE_OBJECTIVES = ("val_accuracy", "accuracy_per_mmac")
