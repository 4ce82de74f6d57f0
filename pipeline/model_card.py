"""A model card per pushed version, in the spirit of TFX's (Model Card Toolkit): what it is, how it was
trained, how well it does, whether it was blessed, how to call it, and what it is not for.

The Pusher writes ``model_card.html`` and ``model_card.md`` into the version's
``assets.extra/``, beside the plots the HTML shows, so the card travels with
the version wherever it is copied. The signatures are read from the exported
``saved_model.pb`` itself, so the card describes what is served, not what was
meant to be.

Usage: ``files = render(version_dir, version=3, config=config_dict, metrics=metrics_dict)``
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from fmnist.common import names

HTML_FILE = "model_card.html"
MARKDOWN_FILE = "model_card.md"
_FIGURES = (
    ("training_curves.png", "Training curves"),
    ("confusion_matrix.png", "Confusion matrix (held out)"),
    ("reliability.png", "Reliability: accuracy against confidence (held out), before and after temperature scaling"),
    ("samples.png", "Training samples"),
    ("model.png", "Network"),
)
_LIMITS = (
    "Input: 28 × 28 grey images of a single garment, light item on dark background, as in Fashion-MNIST; "
    "larger or coloured images are converted to that (grey, resized with antialiasing) inside the graph.",
    f"Output: one of the ten Fashion-MNIST classes ({', '.join(names.CLASS_NAMES)}), always, even for an image "
    "that shows none of them: there is no 'other' class, and a confident answer is no proof the input fits. "
    f"`{names.OUTPUT_UNFAMILIAR}` (with its score, `{names.OUTPUT_OOD_SCORES}`) says when an input is unlike the "
    "training images: read the class of such an input as a guess.",
    "Photographs, several items per image, dark items on light backgrounds and clothing types outside the ten "
    "classes are out of scope; accuracy on them is unmeasured.",
    "Shirt, T-shirt/top, Pullover and Coat are the classes it confuses most (see the per-class table).",
)


@dataclass(frozen=True)
class _Section:
    title: str
    rows: list[tuple[str, ...]]  # (label, value) for a list; a table's cells, under table_header
    table_header: tuple[str, ...] = ()


def signatures(saved_model_dir: str | os.PathLike) -> dict[str, tuple[str, list[str], list[str]]]:
    """signature key → (method name, inputs, outputs) as ``alias dtype [shape]``, from ``saved_model.pb``."""
    model = saved_model_pb2.SavedModel.FromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    graph = next(m for m in model.meta_graphs if "serve" in m.meta_info_def.tags)

    def tensor(alias, info) -> str:
        shape = (
            "?"
            if info.tensor_shape.unknown_rank
            else ", ".join("None" if d.size < 0 else str(d.size) for d in info.tensor_shape.dim)
        )
        return f"{alias} {types_pb2.DataType.Name(info.dtype)[3:].lower()} [{shape}]"

    return {
        key: (
            sig.method_name,
            [tensor(a, i) for a, i in sorted(sig.inputs.items())],
            [tensor(a, i) for a, i in sorted(sig.outputs.items())],
        )
        for key, sig in sorted(graph.signature_def.items())
        if not key.startswith("__")
    }


def render(version_dir: str | os.PathLike, *, version: int, config: dict, metrics: dict) -> dict[str, str]:
    """{file name: content} of the card, for ``assets.extra/``; the figures it shows are the ones present there."""
    version_dir = Path(version_dir)
    train, evaluation, blessing = config["train"], config["eval"], metrics["blessing"]
    title = f"{config['model_name']} version {version}"
    subset = f" (first {train['limit']:,} images)" if train.get("limit") else ""
    sections = [
        _Section(
            "Model details",
            [
                ("Model", f"{config['model_name']}, version {version}, profile `{train['profile']}`"),
                (
                    "Data",
                    f"{metrics['data_source']}: trained on the training split{subset}, "
                    f"{train['validation_split']:.0%} of it held back for validation; evaluated on the "
                    f"{metrics['num_examples']:,} held-out test images",
                ),
                (
                    "Recipe",
                    f"epochs {train['epochs']}, batch {train['batch_size']}, learning rate {train['learning_rate']}, "
                    f"seed {train['seed']}, {'bfloat16' if train['mixed_precision'] else 'float32'} training",
                ),
                ("Training time", f"{metrics['seconds']:.0f} s, whole command"),
            ],
        ),
        _Section(
            "Blessing",
            [
                (
                    "Decision",
                    "blessed"
                    if blessing["blessed"]
                    else ("NOT blessed, pushed with --force" if blessing["forced"] else "NOT blessed"),
                ),
                ("Why", blessing["reason"]),
                (
                    "Gate",
                    f"accuracy ≥ {evaluation['min_accuracy']}, and at most {evaluation['max_regression']} below the "
                    f"latest pushed version ({blessing['baseline_version'] or 'none before'})",
                ),
            ],
        ),
        _Section(
            "Performance on held-out data",
            [
                (name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['support']:,}")
                for name, m in metrics["per_class"].items()
            ]
            + [("**all classes: accuracy**", f"{metrics['accuracy']:.4f}", "", f"{metrics['num_examples']:,}")],
            table_header=("class", "precision", "recall", "images"),
        ),
        _calibration_section(metrics["calibration"]),
        _novelty_section(metrics["novelty"]),
        _Section(
            "Infra validation",
            [
                ("Result", "passed" if metrics["infra_validation"]["passed"] else "REFUSED"),
                ("What", metrics["infra_validation"]["reason"]),
                ("Time", f"{metrics['infra_validation']['seconds']:.1f} s, server start and stop included"),
            ],
        ),
        _Section(
            "Signatures (from saved_model.pb)",
            [
                (key, method, "; ".join(inputs), "; ".join(outputs))
                for key, (method, inputs, outputs) in signatures(version_dir).items()
            ],
            table_header=("signature", "method", "inputs", "outputs"),
        ),
        _Section("Intended use and limits", [("", text) for text in _LIMITS]),
    ]
    figures = [(file, caption) for file, caption in _FIGURES if (version_dir / names.ASSETS_EXTRA / file).is_file()]
    return {HTML_FILE: _html(title, sections, figures), MARKDOWN_FILE: _markdown(title, sections, figures)}


def _calibration_section(calibration: dict) -> _Section:
    return _Section(
        "Calibration",
        [
            (
                "Method",
                f"{calibration['method']}, inside the served graph: logits ÷ {calibration['temperature']:.4f} "
                f"before the softmax, fitted on the {calibration['fitted_on']}; no answer changes",
            ),
            (
                "Expected calibration error",
                f"{calibration['test_ece_before']:.4f} as trained → **{calibration['test_ece_after']:.4f}** on the "
                f"held-out test images ({calibration['bins']} equal-width confidence bins)",
            ),
            (
                "Negative log-likelihood",
                f"{calibration['test_nll_before']:.4f} → {calibration['test_nll_after']:.4f} on the test images",
            ),
        ],
    )


def _novelty_section(novelty: dict) -> _Section:
    return _Section(
        "Unlike the training images",
        [
            (
                "Outputs",
                f"`{names.OUTPUT_OOD_SCORES}` (float32 per image, higher = less like the training images) and "
                f"`{names.OUTPUT_UNFAMILIAR}` (score above the threshold), in `{names.SERVING_DEFAULT}` and "
                f"`{names.PREDICT_IMAGES}`",
            ),
            ("Score", novelty["method"]),
            (
                "Threshold",
                f"{novelty['threshold']:.4f}: flags {novelty['held_back_flagged']:.1%} of the held-back images it was "
                f"set on (aim {novelty['flag_rate']:.0%}) and **{novelty['test_flagged']:.1%}** of the test images",
            ),
            ("Fitted on", novelty["fitted_on"]),
        ],
    )


def _markdown(title: str, sections: list[_Section], figures: list[tuple[str, str]]) -> str:
    lines = [f"# Model card: {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.table_header:
            lines += ["| " + " | ".join(section.table_header) + " |", "|" + "---|" * len(section.table_header)]
            lines += ["| " + " | ".join(row) + " |" for row in section.rows]
        else:
            lines += [f"- **{label}:** {value}" if label else f"- {value}" for label, value in section.rows]
        lines.append("")
    lines += ["## Figures", ""] + [f"![{caption}]({file})" for file, caption in figures]
    return "\n".join(lines) + "\n"


def _html(title: str, sections: list[_Section], figures: list[tuple[str, str]]) -> str:
    def cells(row: tuple[str, ...], tag: str) -> str:
        return "".join(f"<{tag}>{_inline(cell)}</{tag}>" for cell in row)

    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.table_header:
            rows = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in section.rows)
            body.append(f"<table><tr>{cells(section.table_header, 'th')}</tr>{rows}</table>")
        else:
            items = "".join(
                f"<li>{f'<b>{html.escape(label)}:</b> ' if label else ''}{_inline(value)}</li>"
                for label, value in section.rows
            )
            body.append(f"<ul>{items}</ul>")
    body.append(
        "<h2>Figures</h2>"
        + "".join(
            f'<figure><img src="{file}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for file, caption in figures
        )
    )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%}figure{margin:1em 0}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Model card: {html.escape(title)}'
        f"</title><style>{style}</style></head><body><h1>Model card: {html.escape(title)}</h1>"
        + "".join(body)
        + "</body></html>\n"
    )


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``code`` and **bold**, the two marks the card's values use."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        bold = part.split("**")
        part = "".join(f"<b>{b}</b>" if j % 2 else b for j, b in enumerate(bold))
        out.append(f"<code>{part}</code>" if i % 2 else part)
    return "".join(out)
