"""The names an option may take, in a module that imports nothing heavy.

The command line builds its parser (and `condnet --help` answers) from these
without importing Keras; the modules that implement each choice import them
from here.
"""

COLOR_MODES = ("rgb", "grayscale")
ROUTINGS = ("soft", "hard", "gumbel", "teacher")
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
# What `condnet train` reads documents with by default: the cheapest trunk, the first 256
# words of each document, the 20,000 most frequent words of the training split (the
# library's and benchmarks/text_news20.py's sizes; not yet tuned by measurement).
TEXT_DEFAULTS = {"text_trunk": "bag", "sequence_length": 256, "vocabulary_size": 20000}
