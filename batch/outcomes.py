"""What flows through the batch job: an image read from a file, and its outcome.

Every matched file ends as exactly one :class:`Classified` or one
:class:`Failed`; that is how the job guarantees outputs + errors = inputs.
The types are plain frozen dataclasses of str/bytes/int/float so any runner
can pickle them between workers.

Usage: ``Failed(path, Reason.EMPTY, "0 bytes")``
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmnist import imagefile, names


class Reason:
    """Why a file has no classification; the keys of "errors by reason" in the summary and metrics."""

    UNREADABLE = "unreadable"  # the file system refused to open or read it
    # The verdicts of the header check that ``fmnist classify`` makes too (fmnist.imagefile.check).
    EMPTY = imagefile.EMPTY
    NOT_AN_IMAGE = imagefile.NOT_AN_IMAGE
    UNSUPPORTED_FORMAT = imagefile.UNSUPPORTED_FORMAT
    TOO_LARGE = imagefile.TOO_LARGE
    REJECTED = "rejected_by_model"  # the model could not decode it (INVALID_ARGUMENT)
    INFERENCE_FAILED = "inference_failed"  # the model failed on its batch for another reason (RunInference's dead letters)


@dataclass(frozen=True)
class Image:
    """One file's encoded bytes; ``label`` is the class its parent folder names, if any."""

    path: str
    data: bytes
    label: int | None


@dataclass(frozen=True)
class Classified:
    """One file's class probabilities and the model version that produced them.

    ``data`` is the encoded image the model was given, where the classifier
    kept it: ``--format tfrecord`` needs it for the replayable Predict request
    of each PredictionLog. It is the same bytes object the file was read into
    (no copy), and it is left out of equality and ``repr``.
    """

    path: str
    label: int | None
    probabilities: tuple[float, ...]
    model_name: str
    model_version: int
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def class_id(self) -> int:
        """The likeliest class; ties go to the lower id, as the graph's argmax does (max keeps the first).

        Asked three times per file by the job, so no sort: a third of top_k(1)'s cost.
        """
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` likeliest (class id, probability), best first; ties keep label order."""
        order = sorted(range(len(self.probabilities)), key=lambda i: (-self.probabilities[i], i))
        return [(i, self.probabilities[i]) for i in order[:k]]

    @property
    def class_name(self) -> str:
        return names.CLASS_NAMES[self.class_id]


@dataclass(frozen=True)
class Failed:
    """One file that could not be classified: ``reason`` is a :class:`Reason`, ``detail`` says more."""

    path: str
    reason: str
    detail: str


Outcome = Classified | Failed
