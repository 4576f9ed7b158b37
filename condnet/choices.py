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
# words of each document, the 20,000 most frequent words of the training split. Measured
# on 20 Newsgroups, 3 seeds (benchmarks/RESULTS.md, "Text: 20 Newsgroups, trunks" and
# "bag sizes"): bag 0.890 against cnn 0.820 and transformer 0.870 at 1/26,000 of their
# MACs per post; 128, 256 and 512 words within 0.1 point; 10,000 words 1.4 points lower,
# 40,000 0.4 points higher (every seed) at about 1.5x the training time and twice the
# embedding: within the seed spread, so 20,000, the Keras text example's size, stays;
# 20 epochs instead of the runs' 10: 0.888 against 0.890 ("Text: 20 Newsgroups, epochs").
TEXT_DEFAULTS = {"text_trunk": "bag", "sequence_length": 256, "vocabulary_size": 20000}
