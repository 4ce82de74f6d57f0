"""``fmnist classify``: classify image files through a running TF Serving (or embedded) server.

The files' bytes go to the ``predict_images`` signature as they are, so the
server decodes, greys and resizes them exactly as the exported graph says.
Each file's header is checked first with the batch job's own check
(:func:`fmnist.imagefile.check`): an empty file, a non-image, a format other
than PNG/JPEG/GIF/BMP or a decompression bomb is refused without a request,
with the reason and detail ``fmnist batch`` records for it. One unreadable,
refused or undecodable file does not cost the others their answers: they are
printed, the bad ones are reported on stderr, and the exit status is 1.
``--json`` prints the records the batch job writes (:func:`fmnist.imagefile.prediction_record`).
A file the version flags ``unfamiliar`` (unlike its training images: docs/trust.md)
gets one warning line on stderr, naming its ``ood_score``: its class is a guess.

Usage: ``fmnist classify shoe.png bag.jpg --server localhost:8500 --top-k 3 [--json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TextIO

from fmnist.common import errors, imagefile, names, usage
from fmnist.common.client import Prediction, PredictionClient

# A bad file fails its whole batch with one of these; resending singly finds it.
_PER_IMAGE_ERRORS = (errors.InvalidArgument, errors.ResourceExhausted)


def _top_k(value: str) -> int:
    k = int(value)
    if not 1 <= k <= names.NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {names.NUM_CLASSES}")
    return k


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = usage.CommandParser(
        prog=prog,
        description="Classify image files (PNG/JPEG/GIF/BMP, any size) through a running model server. "
        "Prints each file's class, confidence and the model version that answered.",
    )
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files to classify")
    parser.add_argument(
        "--server", default=f"localhost:{names.GRPC_PORT}", help="gRPC host:port (default: %(default)s)"
    )
    parser.add_argument("--model-name", default=names.MODEL_NAME, help="served model name (default: %(default)s)")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--model-version", type=int, help="ask for this version (default: the server's choice)")
    version.add_argument("--version-label", help="ask for the version with this label, e.g. stable")
    parser.add_argument("--top-k", type=_top_k, default=1, help="print the k likeliest classes per file (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file, one per line")
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="files per request (default: %(default)s)")
    parser.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=names.MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse an image whose header claims more pixels, as the server does (default: 4096x4096)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    parser.add_argument("--root-cert", metavar="PEM", help="TLS with this CA certificate instead of the system's")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    prog = prog or "classify"
    try:
        root_cert = None if args.root_cert is None else _read(args.root_cert)
    except OSError as error:
        print(f"{prog}: cannot read --root-cert {args.root_cert}: {error.strerror or error}", file=sys.stderr)
        return 1

    client = PredictionClient(
        args.server, model_name=args.model_name, timeout=args.timeout, tls=args.tls, root_certificates=root_cert
    )
    try:
        failures = _run(client, args, prog)
    except errors.ServingError as error:
        print(f"{prog}: {_describe(error)}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 1 if failures else 0


def _run(client: PredictionClient, args: argparse.Namespace, prog: str) -> int:
    """Print each good file's answer as it arrives and each bad file on stderr; return how many were bad."""
    limits = imagefile.Limits(max_pixels=args.max_image_pixels)
    failures = 0
    for batch in _batches(args.images, args.batch_size):
        readable = []
        for path in batch:
            try:
                data = _read(path, limits.max_file_bytes + 1)  # one byte past the limit is enough to refuse it
            except OSError as error:
                failures += 1
                print(f"{prog}: cannot read {path}: {error.strerror or error}", file=sys.stderr)
                continue
            if problem := imagefile.check(data, limits):
                failures += 1
                print(f"{prog}: {path}: {problem[0]}: {problem[1]}", file=sys.stderr)
            else:
                readable.append((path, data))
        for path, outcome in _predictions(client, readable, args):
            if isinstance(outcome, errors.ServingError):
                failures += 1
                reason = f"{outcome.code.name}: {outcome.details}"
                print(f"{prog}: {path}: rejected by the server: {reason}", file=sys.stderr)
            else:
                _print(path, outcome, args.top_k, args.json, sys.stdout)
                if outcome.unfamiliar is not None and outcome.unfamiliar[0]:
                    print(
                        f"{prog}: warning: {path} is unlike the images the model was trained on "
                        f"(ood_score {outcome.ood_scores[0]:.2f}, above its threshold): its class is a guess",
                        file=sys.stderr,
                        flush=True,
                    )
    return failures


def _read(path: str, limit: int = -1) -> bytes:
    with open(path, "rb") as file:
        return file.read(limit)


def _batches(paths: Sequence[str], size: int) -> Iterator[list[str]]:
    iterator = iter(paths)
    while batch := list(islice(iterator, size)):
        yield batch


def _predictions(
    client: PredictionClient, files: list[tuple[str, bytes]], args: argparse.Namespace
) -> Iterator[tuple[str, Prediction | errors.ServingError]]:
    """Each file with its one-row Prediction, or with the per-image error that rejected it.

    Sends the batch once; only if the server rejects the batch for its content
    does it resend the files one at a time to tell the good from the bad.
    Errors about the server itself (unreachable, unknown model) propagate.
    """
    if not files:
        return
    kwargs = dict(version=args.model_version, version_label=args.version_label, timeout=args.timeout)
    try:
        prediction = client.predict_encoded([data for _, data in files], **kwargs)
    except _PER_IMAGE_ERRORS:  # some file in the batch is bad: one request per file tells which
        for path, data in files:
            try:
                one = client.predict_encoded([data], **kwargs)
            except _PER_IMAGE_ERRORS as error:
                yield path, error
            else:
                yield path, one
        return
    for row, (path, _) in enumerate(files):
        yield path, _row(prediction, row)


def _row(prediction: Prediction, row: int) -> Prediction:
    rows = slice(row, row + 1)
    return dataclasses.replace(
        prediction,
        probabilities=prediction.probabilities[rows],
        class_ids=prediction.class_ids[rows],
        class_names=prediction.class_names[rows],
        ood_scores=None if prediction.ood_scores is None else prediction.ood_scores[rows],
        unfamiliar=None if prediction.unfamiliar is None else prediction.unfamiliar[rows],
    )


def _print(path: str, prediction: Prediction, k: int, as_json: bool, out: TextIO) -> None:
    if as_json:
        probabilities, ranked_ids = prediction.probabilities[0].tolist(), prediction.top_k_ids(k)[0].tolist()
        trust = [None if t is None else t[0].item() for t in (prediction.ood_scores, prediction.unfamiliar)]
        record = imagefile.prediction_record(
            path, probabilities, ranked_ids, prediction.model_name, prediction.version, *trust
        )
        print(json.dumps(record), file=out, flush=True)
        return
    model = f"{prediction.model_name} v{prediction.version}"
    if k == 1:
        class_name = prediction.class_names[0]  # the server's answer; top_k agrees but for exact ties
        confidence = float(prediction.probabilities[0, prediction.class_ids[0]])
        print(f"{path}: {class_name} {confidence:.1%} ({model})", file=out, flush=True)
        return
    ranked = prediction.top_k(k)[0]
    lines = [f"{path}: ({model})"] + [f"  {rank}. {name} {p:.1%}" for rank, (name, p) in enumerate(ranked, 1)]
    print("\n".join(lines), file=out, flush=True)


def _describe(error: errors.ServingError) -> str:
    if isinstance(error, errors.Unavailable):
        return f"cannot reach the server at {error.target}: {error.details}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
