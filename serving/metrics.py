"""Prometheus metrics of one server, and the ``--monitoring_config_file`` reader.

Metric names follow TF Serving's (``:tensorflow:serving:request_count`` ...),
so dashboards built for the real server read ours. Each server has its own
registry, so several servers in one process (tests) never share counters.

Usage::

    metrics = Metrics()
    metrics.observe_request("fashion_mnist", "Predict", "OK", 0.0004)
    text = metrics.exposition()

Thread safety: prometheus_client's metrics may be updated from any thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import prometheus_client

from fmnist.serving import protos

DEFAULT_PATH = "/monitoring/prometheus/metrics"

# tensorflow.serving.MonitoringConfig (monitoring_config.proto).
_SCHEMA = """
name: "fmnist/monitoring_config.proto" package: "tensorflow.serving" syntax: "proto3"
message_type {
  name: "PrometheusConfig"
  field { name: "enable" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "path" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
}
message_type {
  name: "MonitoringConfig"
  field { name: "prometheus_config" number: 1 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".tensorflow.serving.PrometheusConfig" }
}
"""
_MonitoringConfigProto = protos.message_class(_SCHEMA, "tensorflow.serving.MonitoringConfig")


@dataclass(frozen=True)
class MonitoringConfig:
    enabled: bool = True
    path: str = DEFAULT_PATH


def read_monitoring_config(path: str | os.PathLike) -> MonitoringConfig:
    """Parse a text-format MonitoringConfig; ValueError naming the problem."""
    prometheus = protos.parse_text_file(path, _MonitoringConfigProto()).prometheus_config
    return MonitoringConfig(prometheus.enable, prometheus.path or DEFAULT_PATH)


_LATENCY_BUCKETS = tuple(x * 1e-6 for x in (100, 250, 500, 750, 1000, 2500, 5000, 10000, 25000, 100000, 1000000))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Request counts and latency by model/API/status, batch sizes, loaded versions."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self._requests = prometheus_client.Counter(
            ":tensorflow:serving:request_count",
            "Requests, by model, API and gRPC status code.",
            ["model_name", "API", "status"],
            registry=self.registry,
        )
        self._latency = prometheus_client.Histogram(
            ":tensorflow:serving:request_latency",
            "End-to-end request latency in seconds.",
            ["model_name", "API"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batches = prometheus_client.Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Rows per executed batch (before padding).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._padding = prometheus_client.Counter(
            ":tensorflow:serving:batching_session:padding_rows",
            "Rows added to reach an allowed batch size.",
            registry=self.registry,
        )
        self._log_dropped = prometheus_client.Counter(
            ":tensorflow:serving:request_log_dropped",
            "Sampled requests not logged (queue full, disk refused), per model.",
            ["model_name"],
            registry=self.registry,
        )
        self._versions = prometheus_client.Gauge(
            ":tensorflow:serving:loaded_versions",
            "Versions loaded and available, per model.",
            ["model_name"],
            registry=self.registry,
        )

    def observe_request(self, model: str, api: str, status: str, seconds: float) -> None:
        self._requests.labels(model, api, status).inc()
        self._latency.labels(model, api).observe(seconds)

    def observe_batch(self, rows: int, padded: int) -> None:
        self._batches.observe(rows)
        self._padding.inc(padded - rows)

    def observe_log_dropped(self, model: str) -> None:
        self._log_dropped.labels(model).inc()

    def set_versions(self, model: str, versions: list[int]) -> None:
        self._versions.labels(model).set(len(versions))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return prometheus_client.generate_latest(self.registry)
