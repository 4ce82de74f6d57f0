"""Runtime-built messages for TF Serving config protos that tensorflow-serving-api does not ship.

``BatchingParameters`` (session_bundle_config.proto) and ``MonitoringConfig``
(monitoring_config.proto) are read from text-format files by the real
server; building the same messages from a schema here gives the same text
format and the same parse errors, without vendoring generated code.

Usage: ``Cls = message_class(SCHEMA, "tensorflow.serving.MonitoringConfig")``
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2


def message_class(schema: str, full_name: str) -> type:
    """The message class ``full_name`` from a text-format FileDescriptorProto ``schema``.

    Each call uses its own pool, so schemas never clash with the default pool;
    google/protobuf/wrappers.proto is available to them.
    """
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(text_format.Parse(schema, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
