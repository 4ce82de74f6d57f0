"""Names shared by the exporter, the server, the client and the batch job.

Everything that crosses a process boundary (model name, signature keys, tensor
aliases, class names, ports) is spelled here once, so that a rename is one edit
and the parts cannot drift apart.

Usage: ``from fmnist.common import names; names.MODEL_NAME``
"""

from __future__ import annotations

MODEL_NAME = "fashion_mnist"

# Signature keys of every exported SavedModel.
SERVING_DEFAULT = "serving_default"  # raw pixels in, the key TF Serving defaults to
PREDICT_IMAGES = "predict_images"  # encoded image bytes in, decoded inside the graph
CLASSIFY = "classify"  # tf.Example in, for PredictionService.Classify
SIGNATURES = (SERVING_DEFAULT, PREDICT_IMAGES, CLASSIFY)

# Input aliases.
INPUT_IMAGES = "images"  # float32 [batch, 28, 28], raw 0-255 intensities
INPUT_IMAGE_BYTES = "image_bytes"  # string [batch], PNG/JPEG/GIF/BMP bytes
FEATURE_IMAGE = "image"  # the tf.Example bytes feature CLASSIFY reads: one encoded image

# Output aliases, the same for every signature.
OUTPUT_PROBABILITIES = "probabilities"  # float32 [batch, 10]
OUTPUT_CLASS_IDS = "class_ids"  # int64 [batch]
OUTPUT_CLASS_NAMES = "class_names"  # string [batch]
OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_CLASS_IDS, OUTPUT_CLASS_NAMES)
# Added by versions the exporter calibrated (older versions lack them): how unlike the training images
# each input is, and whether that is beyond the version's threshold (in its metrics.json and model card).
OUTPUT_OOD_SCORES = "ood_scores"  # float32 [batch], higher = less like the training images
OUTPUT_UNFAMILIAR = "unfamiliar"  # bool [batch]
TRUST_OUTPUTS = (OUTPUT_OOD_SCORES, OUTPUT_UNFAMILIAR)

# Label order of the Fashion-MNIST release.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28  # images are IMAGE_SIZE x IMAGE_SIZE, one channel

# Limits on one encoded image, shared by the exported graph, the server and the batch job, so
# a file the batch job lets through is one the server and the model accept.
MAX_IMAGE_PIXELS = 4096 * 4096  # as its header claims; checked before anything is decoded
MAX_IMAGE_BYTES = 16 * 1024 * 1024

# Files written beside every pushed version, inside the SavedModel directory.
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

# TensorFlow Serving's default ports.
GRPC_PORT = 8500
# Request logs (PredictionLog TFRecords, as the server's logging_config writes them) end so;
# fmnist batch reads an --input ending so as a log of requests, each with its encoded images.
REQUEST_LOG_SUFFIX = ".tfrecord"
REST_PORT = 8501

ENV_DATA_DIR = "FASHION_MNIST_DIR"


def folder_name(class_id: int) -> str:
    """Class name usable as a directory name ("T-shirt/top" holds a slash)."""
    return CLASS_NAMES[class_id].replace("/", "_")


def class_id_from_folder(folder: str) -> int | None:
    """Inverse of :func:`folder_name`; None for a folder that names no class."""
    for class_id in range(NUM_CLASSES):
        if folder_name(class_id) == folder:
            return class_id
    return None


# The two sides of ``fmnist compare``: keys of its tallies, records and comparison.json.
BASELINE = "baseline"
CANDIDATE = "candidate"
SIDES = (BASELINE, CANDIDATE)
