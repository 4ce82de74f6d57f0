"""``fmnist label``: point a version label (``stable``, ``canary``, ...) at a version, in a model config file
and, with ``--server``, in the running server.

TF Serving reads labels only from its ``--model_config_file`` (a text-format
``ModelServerConfig``): ``version_labels { key: "stable" value: 3 }`` per
model. This command edits that file and, given a server, sends it the edited
config with ``HandleReloadConfigRequest`` first, so the same command promotes a
version on the real TF Serving and on ``fmnist serve`` alike. TF Serving's
rule holds: a label may only name an AVAILABLE version, except that with
``--allow_version_labels_for_unavailable_models`` a label not yet in use may
name a version still loading. The server is asked first and the file is
written only after it agreed, so the file never promises what the server
refused. Without ``--server`` the file alone is edited (a server polling it
with ``--model_config_file_poll_wait_seconds`` picks it up, and checks it).
The file is rewritten by protobuf's text format, which drops its comments.

Usage: ``fmnist label --model_config_file models.config --model_name fashion_mnist --label stable --version 3
[--server localhost:8500]``
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format

from fmnist.common import names, usage
from fmnist.common.apis import get_model_status_pb2, model_server_config_pb2
from fmnist.common.client import PredictionClient
from fmnist.common.errors import ServingError

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class LabelError(Exception):
    """The label cannot be set; the message says why."""


def labelled(
    config: model_server_config_pb2.ModelServerConfig, model_name: str, label: str, version: int
) -> model_server_config_pb2.ModelServerConfig:
    """A copy of ``config`` with ``label`` naming ``version`` of ``model_name``."""
    updated = model_server_config_pb2.ModelServerConfig()
    updated.CopyFrom(config)
    entries = {entry.name: entry for entry in updated.model_config_list.config}
    if model_name not in entries:
        raise LabelError(f"the config lists no model {model_name!r} (it has: {', '.join(entries) or 'none'})")
    entries[model_name].version_labels[label] = version
    return updated


def _check_available(
    client: PredictionClient,
    config: model_server_config_pb2.ModelServerConfig,
    model_name: str,
    label: str,
    version: int,
    allow_unavailable: bool,
    timeout: float,
) -> None:
    states = {s.version: s.state for s in client.status(timeout=timeout).model_version_status}
    if states.get(version) == _AVAILABLE:
        return
    entry = next(e for e in config.model_config_list.config if e.name == model_name)
    if allow_unavailable and label not in entry.version_labels:
        return  # TF Serving lets a new label name a version still to come, never move one there
    state = (
        get_model_status_pb2.ModelVersionStatus.State.Name(states[version]) if version in states else "unknown to it"
    )
    raise LabelError(
        f"version {version} of {model_name} is not AVAILABLE on {client.target} ({state}); "
        "a label may only name a version that serves"
        + (
            ""
            if allow_unavailable
            else " (a new label may name one still loading with --allow_version_labels_for_unavailable_models)"
        )
    )


def _write_atomically(path: Path, text: str) -> None:
    """A server polling the file never reads half of it."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


def run(
    config_file: str,
    model_name: str,
    label: str,
    version: int,
    *,
    server: str | None = None,
    allow_unavailable: bool = False,
    timeout: float = 30.0,
    client_factory=PredictionClient,
) -> model_server_config_pb2.ModelServerConfig:
    """Set the label in the file (and the server); returns the new config. Raises LabelError or ServingError."""
    path = Path(config_file)
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as error:
        raise LabelError(f"cannot read model config file {path}: {error}") from None
    updated = labelled(config, model_name, label, version)
    if server:
        with client_factory(server, model_name=model_name, timeout=timeout) as client:
            _check_available(client, config, model_name, label, version, allow_unavailable, timeout)
            client.reload_config(updated, timeout=timeout)
    _write_atomically(path, text_format.MessageToString(updated))
    return updated


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = usage.CommandParser(
        prog=prog,
        description="Point a version label at a version, in a model config "
        "file and, with --server, in the running server (TF Serving's rules).",
    )
    parser.add_argument("--model_config_file", required=True, help="the text-format ModelServerConfig the server reads")
    parser.add_argument("--model_name", default=names.MODEL_NAME)
    parser.add_argument("--label", required=True, help="e.g. stable, canary")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--server", metavar="HOST:PORT", help="also make this server reload the edited config")
    parser.add_argument(
        "--allow_version_labels_for_unavailable_models",
        action="store_true",
        help="the server runs with this TF Serving flag: a new label may name a version still loading",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds (default 30)")
    args = parser.parse_args(argv)
    prog = prog or "label"
    try:
        run(
            args.model_config_file,
            args.model_name,
            args.label,
            args.version,
            server=args.server,
            allow_unavailable=args.allow_version_labels_for_unavailable_models,
            timeout=args.timeout,
        )
    except (LabelError, ServingError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    where = f"; {args.server} reloaded it" if args.server else ""
    print(f"{args.label} → version {args.version} of {args.model_name} in {args.model_config_file}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
