"""The batch job's ``report.html``: the summary as a page a person reads, with the images worth a look.

Counts, errors by reason, the per-class table, the confusion matrix for
labelled folders, and three galleries: the files the model was least sure of,
the misclassified ones it was surest of, and the ones it flagged unfamiliar
(unlike its training images: docs/trust.md), highest ``ood_score`` first, each
with its top 3. The
pipeline keeps only the few candidates the galleries need (:class:`Gallery`,
a combiner over one small list per batch, so no per-file element), and the
launcher reads just those files back to draw them. Everything is inlined, so
the page is one file, readable offline and wherever it is copied.

Usage: ``outcomes_batches | beam.Map(candidates, 12) | beam.CombineGlobally(Gallery(12))``;
``html = render(summary, gallery, read=lambda path: bytes)``
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable

import apache_beam as beam
from PIL import Image as PILImage

from fmnist.batch import summary as summary_lib
from fmnist.batch.outcomes import Classified, Outcome, carried, utf8_text
from fmnist.common import names

REPORT_FILE = "report.html"
GALLERY_SIZE = 12
_THUMBNAIL = 84  # pixels: 3x the model's 28, sharp enough to see what it saw
LEAST_SURE, SUREST_MISTAKES, MOST_UNFAMILIAR = "least_sure", "surest_mistakes", "most_unfamiliar"


def _entry(outcome: Classified) -> dict:
    return {
        "path": carried(outcome.path),  # a bare str must be UTF-8 for Beam, and a file name may not be
        "label": outcome.label,
        "confidence": max(outcome.probabilities),
        "top3": outcome.top_k(3),
        "ood_score": outcome.ood_score,
    }


def candidates(outcomes: list[Outcome], size: int = GALLERY_SIZE) -> dict[str, list[dict]]:
    """One batch's contenders for the three galleries, at most ``size`` each."""
    classified = [o for o in outcomes if isinstance(o, Classified)]
    mistakes = [o for o in classified if o.label is not None and o.label != o.class_id]
    unfamiliar = [o for o in classified if o.unfamiliar]
    return {
        LEAST_SURE: [_entry(o) for o in sorted(classified, key=lambda o: max(o.probabilities))[:size]],
        SUREST_MISTAKES: [_entry(o) for o in sorted(mistakes, key=lambda o: -max(o.probabilities))[:size]],
        MOST_UNFAMILIAR: [_entry(o) for o in sorted(unfamiliar, key=lambda o: -o.ood_score)[:size]],
    }


class Gallery(beam.CombineFn):
    """Per-batch candidates → the job's galleries: the ``size`` least sure files, the ``size`` surest mistakes,
    the ``size`` unfamiliar files of highest ``ood_score``."""

    def __init__(self, size: int = GALLERY_SIZE):
        self._size = size

    def create_accumulator(self) -> dict[str, list[dict]]:
        return {LEAST_SURE: [], SUREST_MISTAKES: [], MOST_UNFAMILIAR: []}

    def add_input(self, accumulator: dict, batch: dict) -> dict:
        return self.merge_accumulators([accumulator, batch])

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for key in merged:
                merged[key] += accumulator[key]
        # ties broken by path, so a gallery does not depend on how the runner split the work
        merged[LEAST_SURE] = sorted(merged[LEAST_SURE], key=lambda e: (e["confidence"], e["path"]))[: self._size]
        merged[SUREST_MISTAKES] = sorted(merged[SUREST_MISTAKES], key=lambda e: (-e["confidence"], e["path"]))[
            : self._size
        ]
        merged[MOST_UNFAMILIAR] = sorted(merged[MOST_UNFAMILIAR], key=lambda e: (-e["ood_score"], e["path"]))[
            : self._size
        ]
        return merged

    def extract_output(self, accumulator: dict) -> dict:
        return accumulator


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _thumbnail(data: bytes) -> str:
    """The image as a small grey PNG data URI; the original format and size do not matter to the page."""
    image = PILImage.open(io.BytesIO(data))
    image.draft("L", (_THUMBNAIL, _THUMBNAIL))  # JPEGs decode at a reduced size straight away
    image = image.convert("L").resize((_THUMBNAIL, _THUMBNAIL), PILImage.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return _data_uri(buffer.getvalue())


def render(
    summary: summary_lib.Summary,
    gallery: dict[str, list[dict]],
    read: Callable[[str], bytes],
    matrix_png: bytes | None = None,
) -> str:
    """The report page; ``read(path)`` returns a gallery file's bytes (through Beam's file systems);
    ``matrix_png`` is the confusion matrix the job wrote (:func:`batch.summary.confusion_png`), shown when the
    summary has an evaluation."""
    models = ", ".join(
        f"{m['model_name']} v{m['model_version']} ({summary_lib.counted(m['files'], 'file')})" for m in summary.models
    )
    facts = [
        ("Files", f"{summary.inputs:,}"),
        ("Classified", f"{summary.classified:,}"),
        ("Errors", f"{summary.errors:,}"),
        ("Files/s", f"{summary.files_per_second:,.1f}"),
        ("Elapsed", f"{summary.elapsed_seconds:.1f} s"),
        ("Source", summary.source),
        ("Model versions", models),
    ]
    if summary.resumed:
        facts.insert(
            4,
            (
                "Resumed",
                f"{summary_lib.counted(summary.resumed, 'file')} done by an interrupted run (Files/s counts the rest)",
            ),
        )
    if summary.unfamiliar is not None:
        apart = "their classes are guesses, not in the per-class counts or the accuracy"
        facts.append(("Unfamiliar", f"{summary.unfamiliar:,}: {apart}"))
    if evaluation := summary.evaluation:
        labelled = summary_lib.counted(evaluation.files, "labelled file")
        if evaluation.unfamiliar_files:
            left_out = summary_lib.counted(evaluation.unfamiliar_files, "unfamiliar one")
            labelled += f" ({left_out} left out: {evaluation.unfamiliar_accuracy:.2%} right)"
        facts.append(("Accuracy", f"{evaluation.accuracy:.2%} on {labelled}"))
    parts = ["<h2>Summary</h2>" + facts_table("summary", facts)]
    if summary.errors_by_reason:
        parts.append(errors_section(summary.errors_by_reason))
    parts.append(_per_class(summary))
    if summary.evaluation and matrix_png:
        parts.append(
            "<h2>Confusion matrix</h2><img class='matrix' alt='confusion matrix' src='" + _data_uri(matrix_png) + "'>"
        )
    titles = {
        LEAST_SURE: "Least sure",
        SUREST_MISTAKES: "Misclassified, surest first",
        MOST_UNFAMILIAR: "Unfamiliar (unlike the training images: their classes are guesses), most unfamiliar first",
    }
    for key, title in titles.items():
        if gallery.get(key):
            parts.append(
                f"<h2>{title}</h2><div class='gallery' id='{key}'>"
                + "".join(_card(entry, read) for entry in gallery[key])
                + "</div>"
            )
    return page("fmnist batch report", parts)


def page(title: str, parts: Iterable[str]) -> str:
    """A whole self-contained page: ``title`` as its heading, then ``parts`` (HTML) in order."""
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        ".gallery{display:flex;flex-wrap:wrap;gap:1em}.card{width:12em;font-size:.85em}"
        ".card img{width:84px;height:84px;image-rendering:pixelated;background:#000}"
        ".path{word-break:break-all;color:#555}img.matrix{max-width:100%}"
    )
    title = html.escape(title)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body><h1>{title}</h1>" + "".join(parts) + "</body></html>\n"
    )


def facts_table(table_id: str, facts: Iterable[tuple[str, str]]) -> str:
    """(name, value) rows as a two-column table."""
    e = html.escape
    return (
        f"<table id='{table_id}'>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>"
    )


def errors_section(errors_by_reason: dict[str, int]) -> str:
    """Errors by reason, pointing at the ``errors-*`` records."""
    return (
        "<h2>Errors by reason</h2>"
        + facts_table("errors", ((r, f"{n:,}") for r, n in errors_by_reason.items()))
        + "<p>Each one, with its path and detail, is in <code>errors-*</code>.</p>"
    )


def _per_class(summary: summary_lib.Summary) -> str:
    evaluation = summary.evaluation
    header = (
        "<tr><th>class</th><th>predicted</th>" + ("<th>labelled</th><th>recall</th>" if evaluation else "") + "</tr>"
    )
    rows = []
    for name, predicted in summary.counts_per_class.items():
        cells = f"<td>{html.escape(name)}</td><td>{predicted:,}</td>"
        if evaluation:
            recall = evaluation.per_class_recall[name]
            cells += (
                f"<td>{evaluation.labelled_per_class[name]:,}</td><td>{'' if recall is None else f'{recall:.2f}'}</td>"
            )
        rows.append(f"<tr>{cells}</tr>")
    apart = "" if summary.unfamiliar is None else "<p>Predicted classes of the files not flagged unfamiliar.</p>"
    return "<h2>Per class</h2>" + apart + "<table id='per-class'>" + header + "".join(rows) + "</table>"


def _card(entry: dict, read: Callable[[str], bytes]) -> str:
    top = "<br>".join(f"{html.escape(names.CLASS_NAMES[i])} {p:.1%}" for i, p in entry["top3"])
    label = "" if entry["label"] is None else f"<br>folder: {html.escape(names.CLASS_NAMES[entry['label']])}"
    score = "" if entry["ood_score"] is None else f"<br>ood_score {entry['ood_score']:.2f}"
    return card(entry["path"], top + label + score, read)


def card(path: str, caption: str, read: Callable[[str], bytes]) -> str:
    """One gallery card: the file's thumbnail (read now), ``caption`` (HTML) and its path."""
    try:
        picture = f"<img alt='{html.escape(utf8_text(path))}' src='{_thumbnail(read(path))}'>"
    except (OSError, ValueError) as error:  # changed or gone since the job read it; PIL's errors are OSErrors
        picture = f"<p>(cannot show it now: {html.escape(str(error))})</p>"
    shown = html.escape(utf8_text(path))
    return f"<div class='card'>{picture}<div>{caption}</div><div class='path'>{shown}</div></div>"
