"""Runtime-built messages for TF Serving config protos that tensorflow-serving-api does not ship.

``BatchingParameters`` (session_bundle_config.proto) and ``MonitoringConfig``
(monitoring_config.proto) are read from text-format files by the real
server; building the same messages from a schema here gives the same text
format and the same parse errors, without vendoring generated code.

Usage::

    Cls = message_class(SCHEMA, "tensorflow.serving.MonitoringConfig")
    config = parse_text_file("monitoring.config", Cls())
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def message_class(schema: str, full_name: str) -> type:
    """The message class ``full_name`` from a text-format FileDescriptorProto ``schema``.

    Each call uses its own pool, so schemas never clash with the default pool;
    google/protobuf/wrappers.proto is available to them.
    """
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(text_format.Parse(schema, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def parse_text_file(path: str | os.PathLike, message: M) -> M:
    """``message`` filled from the text-format file ``path``, or ValueError in TF Serving's words.

    TF Serving's ParseProtoTextFile fails every config file it cannot read with "Invalid
    protobuf file: '<path>'"; when the text does not parse, protobuf's parser has logged
    "Error parsing text-format <message type>: <line>:<column>: <why>" just before, and the
    error says both.
    """
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"Invalid protobuf file: '{path}': {error}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(
            f"Invalid protobuf file: '{path}': Error parsing text-format {message.DESCRIPTOR.full_name}: {error}"
        ) from None
