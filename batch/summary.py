"""The batch job's summary: counts, errors by reason, throughput, and accuracy when folders are labelled.

The pipeline reduces its outcomes to a handful of ``(key..., count)`` tallies
(:func:`tally`) — a few hundred numbers whatever the input size — and the
launcher, which alone knows the elapsed time, turns them into a
:class:`Summary`, ``summary.json`` and, for labelled inputs, a confusion-matrix
PNG. Tallies travel in the data, not in Beam metrics, because not every runner
reports metrics exactly.

Files the model flagged ``unfamiliar`` (unlike its training images, so their
class is a guess: docs/trust.md) are counted apart: ``unfamiliar`` and the
classes guessed for them (``unfamiliar_per_class``), kept out of
``counts_per_class`` and of the evaluation, which says how many labelled files
it left out and its accuracy on them. A version without the trust outputs
flags nothing, and ``unfamiliar`` is then None.

Usage: ``summary = summarize(counts, elapsed, source); write(summary, out); print(render(summary))``
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from fmnist.batch.outcomes import Classified, Outcome
from fmnist.common import names
from fmnist.common.report import confusion_matrix_png

SUMMARY_FILE = "summary.json"
CONFUSION_FILE = "confusion_matrix.png"
INPUT = ("input",)  # the tally of every matched file


def tallies(outcomes: Iterable[Outcome]) -> Counter:
    """The keys a batch of outcomes adds to, each with how much (one list, counted at once: the job tallies every
    file)."""
    keys = []
    for outcome in outcomes:
        if isinstance(outcome, Classified):
            apart = "unfamiliar_" if outcome.unfamiliar else ""  # its class a guess: counted apart
            keys.append((apart + "class", outcome.class_id))
            keys.append(("model", outcome.model_name, outcome.model_version))
            if outcome.label is not None:
                keys.append((apart + "pair", outcome.label, outcome.class_id))
            if outcome.unfamiliar is not None:
                keys.append(("scored",))
        else:
            keys.append(("error", outcome.reason))
    return Counter(keys)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy over the classified files whose folder names their class (errors and unfamiliar files excluded)."""

    files: int
    accuracy: float
    labelled_per_class: dict[str, int]  # classified files whose folder names that class
    per_class_recall: dict[str, float | None]  # None: no file of that class
    confusion_matrix: list[list[int]]  # [true label][predicted class]
    unfamiliar_files: int = 0  # labelled files flagged unfamiliar, left out of the above
    unfamiliar_accuracy: float | None = None  # the model's guesses' accuracy on those; None: there were none


@dataclass(frozen=True)
class Summary:
    inputs: int
    classified: int
    errors: int
    counts_per_class: dict[str, int]  # classified files per predicted class, but for the unfamiliar ones
    errors_by_reason: dict[str, int]
    models: list[dict]  # {"model_name", "model_version", "files"}: which versions answered
    source: str  # "server HOST:PORT" or "in-process PATH"
    elapsed_seconds: float
    files_per_second: float  # of the files this run classified (or found bad), not those resumed
    evaluation: Evaluation | None  # None unless some input folder is labelled
    resumed: int = 0  # inputs whose outcome an interrupted run had saved (``--resume``); counted in the rest too
    unfamiliar: int | None = None  # classified files flagged unfamiliar; None: no version that answered flags any
    unfamiliar_per_class: dict[str, int] | None = None  # the classes guessed for those


def summarize(counts: Mapping[tuple, int], elapsed: float, source: str, resumed: int = 0) -> Summary:
    """A :class:`Summary` from the pipeline's tallies; raises if outputs + errors ≠ inputs.

    ``resumed`` of the inputs had their outcomes from an interrupted run's checkpoints: they count
    everywhere but in the rate, which is this run's.
    """
    by_kind: dict[str, dict[tuple, int]] = {}
    for key, count in counts.items():
        by_kind.setdefault(key[0], {})[key[1:]] = count
    inputs = counts.get(INPUT, 0)
    per_class, unfamiliar = (
        {names.CLASS_NAMES[i]: by_kind.get(kind, {}).get((i,), 0) for i in range(names.NUM_CLASSES)}
        for kind in ("class", "unfamiliar_class")
    )
    errors = dict(sorted((reason, n) for (reason,), n in by_kind.get("error", {}).items()))
    classified, failed = sum(per_class.values()) + sum(unfamiliar.values()), sum(errors.values())
    if classified + failed != inputs:
        raise RuntimeError(f"lost files: {inputs} inputs but {classified} classified + {failed} errors")
    models = [
        {"model_name": name, "model_version": version, "files": n}
        for (name, version), n in sorted(by_kind.get("model", {}).items())
    ]
    return Summary(
        inputs=inputs,
        classified=classified,
        errors=failed,
        counts_per_class=per_class,
        errors_by_reason=errors,
        models=models,
        source=source,
        elapsed_seconds=round(elapsed, 3),
        files_per_second=round((inputs - resumed) / elapsed, 1) if elapsed > 0 else 0.0,
        evaluation=_evaluate(by_kind.get("pair", {}), by_kind.get("unfamiliar_pair", {})),
        resumed=resumed,
        unfamiliar=sum(unfamiliar.values()) if counts.get(("scored",)) else None,
        unfamiliar_per_class=unfamiliar if counts.get(("scored",)) else None,
    )


def _evaluate(pairs: Mapping[tuple, int], unfamiliar_pairs: Mapping[tuple, int]) -> Evaluation | None:
    """The evaluation of the familiar labelled files' (true, predicted) counts; the unfamiliar ones' only counted."""
    if not pairs:
        return None
    apart = sum(unfamiliar_pairs.values())
    apart_correct = sum(n for (true, predicted), n in unfamiliar_pairs.items() if true == predicted)
    matrix = [
        [pairs.get((true, predicted), 0) for predicted in range(names.NUM_CLASSES)] for true in range(names.NUM_CLASSES)
    ]
    files = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(names.NUM_CLASSES))
    recall = {
        names.CLASS_NAMES[i]: (round(matrix[i][i] / sum(row), 4) if sum(row) else None) for i, row in enumerate(matrix)
    }
    labelled = {names.CLASS_NAMES[i]: sum(row) for i, row in enumerate(matrix)}
    return Evaluation(
        files=files,
        accuracy=round(correct / files, 4),
        labelled_per_class=labelled,
        per_class_recall=recall,
        confusion_matrix=matrix,
        unfamiliar_files=apart,
        unfamiliar_accuracy=round(apart_correct / apart, 4) if apart else None,
    )


def to_json(summary: Summary) -> str:
    return json.dumps(asdict(summary), indent=2)


def confusion_png(summary: Summary) -> bytes:
    """A labelled run's confusion matrix as a PNG (rows: the folder's class, columns: predicted), titled
    with the model versions that answered."""
    evaluation = summary.evaluation
    models = ", ".join(f"{m['model_name']} v{m['model_version']}" for m in summary.models)
    return confusion_matrix_png(
        evaluation.confusion_matrix,
        ylabel="true (folder)",
        title=f"{models}: accuracy {evaluation.accuracy:.2%} on {counted(evaluation.files, 'file')}",
    )


def counted(n: int, noun: str) -> str:
    """``n`` of ``noun``, in the singular for one: "1 file", "1,234 files"."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def render(summary: Summary) -> str:
    """The summary as a few lines for a terminal."""
    lines = [
        f"{counted(summary.inputs, 'file')}: {summary.classified:,} classified, {counted(summary.errors, 'error')} "
        f"in {summary.elapsed_seconds:.1f}s ({summary.files_per_second:.1f} files/s) via {summary.source}"
        + (f"; {summary.resumed} of them resumed from an interrupted run" if summary.resumed else ""),
    ]
    if summary.evaluation:
        labelled = summary.evaluation.labelled_per_class
        lines.append(
            "per class, predicted / labelled: "
            + ", ".join(f"{name} {n}/{labelled[name]}" for name, n in summary.counts_per_class.items())
        )
    else:
        lines.append("predicted per class: " + ", ".join(f"{name} {n}" for name, n in summary.counts_per_class.items()))
    if summary.unfamiliar is not None:
        guesses = ", ".join(f"{name} {n}" for name, n in summary.unfamiliar_per_class.items() if n)
        lines.append(
            f"unfamiliar: {summary.unfamiliar:,} (unlike the training images, so their classes are guesses"
            + (f": {guesses}" if guesses else "")
            + "; not in the per-class counts or the accuracy)"
        )
    if summary.errors_by_reason:
        lines.append("errors: " + ", ".join(f"{reason} {n}" for reason, n in summary.errors_by_reason.items()))
    if summary.evaluation:
        e = summary.evaluation
        recall = ", ".join(f"{name} {r:.2f}" for name, r in e.per_class_recall.items() if r is not None)
        apart = (
            f"; {counted(e.unfamiliar_files, 'unfamiliar labelled file')} left out ({e.unfamiliar_accuracy:.2%} right)"
            if e.unfamiliar_files
            else ""
        )
        lines.append(f"accuracy {e.accuracy:.2%} on {counted(e.files, 'labelled file')}{apart}; recall: {recall}")
    return "\n".join(lines)
