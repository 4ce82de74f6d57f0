"""``fmnist compare``'s verdict: the comparison's numbers, the gate, and how they read (JSON, a terminal, HTML).

The pipeline reduces every compared file to a few tallies (which class each
side gave, who answered, whether each was right for labelled folders, whether
each flagged it unfamiliar; errors by reason); :func:`summarize` makes them a :class:`Comparison`, :func:`judge`
applies ``--max-disagreement`` and ``--min-accuracy-delta`` to it, and the
rest write it for people and programs.

Usage::

    comparison = summarize(counts, elapsed, config); gate = judge(comparison, config)
    print(render(comparison, gate)); text = to_json(comparison, gate)
    page = render_html(comparison, gate, gallery, read=lambda path: bytes)
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from fmnist.batch import report, summary
from fmnist.batch.options import CompareConfig
from fmnist.common import names

GALLERY_SIZE = 24  # disagreeing files drawn in the report; all of them are in disagreements-*


@dataclass(frozen=True)
class Comparison:
    """What ``comparison.json`` holds (with the gate's verdict beside it)."""

    files: int
    compared: int  # files both versions answered
    errors: int  # files either version refused, or that could not be read
    agreement: float | None  # share of compared files given the same class; None when none was compared
    flips: list[dict]  # {"baseline": class, "candidate": class, "files": n}, most files first
    errors_by_reason: dict[str, int]
    requested: dict[str, str]  # side → the version or label asked for
    versions: dict[str, list[dict]]  # side → {"model_name", "model_version", "files"}: who actually answered
    accuracy: dict | None  # labelled folders only: {"files", "baseline", "candidate", "delta"}
    source: str
    elapsed_seconds: float
    # side → compared files it flagged unfamiliar (docs/trust.md); None: its version serves no such flag
    unfamiliar: dict[str, int | None]


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str  # why it failed, or what was checked


def summarize(counts: Mapping[tuple, int], elapsed: float, config: CompareConfig) -> Comparison:
    """A :class:`Comparison` from the pipeline's tallies; raises if compared + errors ≠ inputs."""
    by_kind: dict[str, dict[tuple, int]] = {}
    for key, count in counts.items():
        by_kind.setdefault(key[0], {})[key[1:]] = count
    files = counts.get(summary.INPUT, 0)
    pairs = by_kind.get("pair", {})
    compared = sum(pairs.values())
    errors = dict(sorted((reason, n) for (reason,), n in by_kind.get("error", {}).items()))
    if compared + sum(errors.values()) != files:
        raise RuntimeError(f"lost files: {files} inputs but {compared} compared + {sum(errors.values())} errors")
    agreed = sum(n for (baseline, candidate), n in pairs.items() if baseline == candidate)
    flips = [
        {names.BASELINE: names.CLASS_NAMES[b], names.CANDIDATE: names.CLASS_NAMES[c], "files": n}
        for (b, c), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
        if b != c
    ]
    versions = {
        side: [
            {"model_name": name, "model_version": version, "files": n}
            for (s, name, version), n in sorted(by_kind.get("model", {}).items())
            if s == side
        ]
        for side in names.SIDES
    }
    return Comparison(
        files=files,
        compared=compared,
        errors=sum(errors.values()),
        agreement=round(agreed / compared, 6) if compared else None,
        flips=flips,
        errors_by_reason=errors,
        requested={names.BASELINE: str(config.baseline), names.CANDIDATE: str(config.candidate)},
        versions=versions,
        accuracy=_accuracy(by_kind.get("correct", {})),
        source=f"server {config.server.target}",
        elapsed_seconds=round(elapsed, 3),
        unfamiliar=_unfamiliar(by_kind.get("unfamiliar", {})),
    )


def _unfamiliar(flags: Mapping[tuple, int]) -> dict[str, int | None]:
    """Per side, the compared files it flagged; None for a side whose answers carried no flag."""
    scored = {side for side, _ in flags}
    return {side: flags.get((side, True), 0) if side in scored else None for side in names.SIDES}


def _accuracy(correct: Mapping[tuple, int]) -> dict | None:
    """Each side's accuracy on the compared files in labelled folders, and candidate − baseline."""
    if not correct:
        return None
    files = sum(n for (side, _), n in correct.items() if side == names.BASELINE)
    right = {side: correct.get((side, True), 0) for side in names.SIDES}
    return {
        "files": files,
        **{side: round(right[side] / files, 6) for side in names.SIDES},
        "delta": round((right[names.CANDIDATE] - right[names.BASELINE]) / files, 6),
    }


def judge(comparison: Comparison, config: CompareConfig) -> Gate:
    """Whether the candidate may be promoted, under ``--max-disagreement`` and ``--min-accuracy-delta``."""
    if comparison.agreement is None:
        if config.max_disagreement < 1.0:
            return Gate(False, "no file was answered by both versions, so disagreement is unknown")
    elif 1.0 - comparison.agreement > config.max_disagreement:
        return Gate(
            False,
            f"disagreement {1.0 - comparison.agreement:.2%} is above --max-disagreement {config.max_disagreement:.2%}",
        )
    checked = [
        f"disagreement at most {config.max_disagreement:.2%}"
        if config.max_disagreement < 1.0
        else "no disagreement limit"
    ]
    if config.min_accuracy_delta is not None:
        if comparison.accuracy is None:
            checked.append("--min-accuracy-delta not checked: no labelled folders")
        elif comparison.accuracy["delta"] < config.min_accuracy_delta:
            return Gate(
                False,
                f"accuracy delta {comparison.accuracy['delta']:+.2%} (candidate − baseline) is below "
                f"--min-accuracy-delta {config.min_accuracy_delta:+.2%}",
            )
        else:
            checked.append(f"accuracy delta at least {config.min_accuracy_delta:+.2%}")
    return Gate(True, "; ".join(checked))


def to_json(comparison: Comparison, gate: Gate) -> str:
    return json.dumps({**asdict(comparison), "gate": asdict(gate)}, indent=2)


def _answered(comparison: Comparison, side: str) -> str:
    """Who answered a side, e.g. "fashion_mnist v2 (38 files)"."""
    answered = ", ".join(
        f"{m['model_name']} v{m['model_version']} ({summary.counted(m['files'], 'file')})"
        for m in comparison.versions[side]
    )
    return f"{comparison.requested[side]} → {answered or 'no file'}"


def _unfamiliar_counts(comparison: Comparison) -> str:
    """The compared files each side flagged unfamiliar, e.g. "baseline (its version serves no flag), candidate 3"."""
    return ", ".join(
        f"{side} {'(its version serves no flag)' if n is None else f'{n:,}'}"
        for side, n in comparison.unfamiliar.items()
    )


def _agreement(comparison: Comparison) -> str:
    if comparison.agreement is None:
        return "none compared"
    agreed = comparison.compared - sum(f["files"] for f in comparison.flips)
    return f"{comparison.agreement:.2%} ({agreed:,} of {comparison.compared:,})"


def render_html(comparison: Comparison, gate: Gate, gallery: list[dict], read: Callable[[str], bytes]) -> str:
    """``report.html``: comparison.json's numbers, the flips, and the disagreeing files with both answers."""
    e = html.escape
    facts = [
        ("Files", f"{comparison.files:,}"),
        ("Compared", f"{comparison.compared:,}"),
        ("Errors", f"{comparison.errors:,}"),
        ("Agreement", _agreement(comparison)),
        ("Baseline", _answered(comparison, names.BASELINE)),
        ("Candidate", _answered(comparison, names.CANDIDATE)),
        ("Unfamiliar", _unfamiliar_counts(comparison)),
    ]
    if comparison.accuracy:
        accuracy = comparison.accuracy
        facts += [
            ("Baseline accuracy", f"{accuracy[names.BASELINE]:.2%}"),
            ("Candidate accuracy", f"{accuracy[names.CANDIDATE]:.2%}"),
            ("Accuracy delta", f"{accuracy['delta']:+.2%} on {summary.counted(accuracy['files'], 'labelled file')}"),
        ]
    facts += [
        ("Gate", ("passed: " if gate.passed else "failed: ") + gate.reason),
        ("Source", comparison.source),
        ("Elapsed", f"{comparison.elapsed_seconds:.1f} s"),
    ]
    parts = ["<h2>Comparison</h2>" + report.facts_table("comparison", facts)]
    if comparison.errors_by_reason:
        parts.append(report.errors_section(comparison.errors_by_reason))
    rows = "".join(
        f"<tr><td>{e(f[names.BASELINE])}</td><td>{e(f[names.CANDIDATE])}</td><td>{f['files']:,}</td></tr>"
        for f in comparison.flips
    )
    parts.append(
        "<h2>Flips</h2>"
        + (
            f"<table id='flips'><tr><th>baseline class</th><th>candidate class</th><th>files</th></tr>{rows}</table>"
            if rows
            else "<p>None: every compared file agreed.</p>"
        )
    )
    if gallery:
        shown = f"the {len(gallery)} where both were surest" if len(gallery) == GALLERY_SIZE else "all of them"
        parts.append(
            f"<h2>Disagreements</h2><p>{shown}; every one is in <code>disagreements-*</code>.</p>"
            "<div class='gallery' id='disagreements'>" + "".join(_card(r, read) for r in gallery) + "</div>"
        )
    return report.page("fmnist compare report", parts)


def _card(record: dict, read: Callable[[str], bytes]) -> str:
    answers = "<br>".join(
        f"{side} v{record[f'{side}_version']}: {html.escape(record[f'{side}_class'])} "
        f"{record[f'{side}_confidence']:.1%}"
        for side in names.SIDES
    )
    label = "" if record["label"] is None else f"<br>folder: {html.escape(record['label'])}"
    return report.card(record["path"], answers + label, read)


def render(comparison: Comparison, gate: Gate) -> str:
    """The comparison as a few lines for a terminal."""
    files, errors = summary.counted(comparison.files, "file"), summary.counted(comparison.errors, "error")
    lines = [
        f"{files}: {comparison.compared:,} compared, {errors} "
        f"in {comparison.elapsed_seconds:.1f}s via {comparison.source}",
        f"agreement {_agreement(comparison)}",
        *(f"{side}: {_answered(comparison, side)}" for side in names.SIDES),
        f"unfamiliar: {_unfamiliar_counts(comparison)}",
    ]
    if comparison.flips:
        lines.append(
            "flips (baseline → candidate): "
            + ", ".join(f"{f[names.BASELINE]} → {f[names.CANDIDATE]} {f['files']}" for f in comparison.flips)
        )
    if comparison.errors_by_reason:
        lines.append("errors: " + ", ".join(f"{reason} {n}" for reason, n in comparison.errors_by_reason.items()))
    if comparison.accuracy:
        a = comparison.accuracy
        lines.append(
            f"accuracy on {summary.counted(a['files'], 'labelled file')}: baseline {a[names.BASELINE]:.2%}, "
            f"candidate {a[names.CANDIDATE]:.2%}, delta {a['delta']:+.2%}"
        )
    lines.append(f"gate: {'passed' if gate.passed else 'failed'}: {gate.reason}")
    return "\n".join(lines)
