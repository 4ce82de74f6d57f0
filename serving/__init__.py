"""Serving: an embedded TF-Serving-conformant server, the commands around it, and TF Serving's config files.

Laid out as TF Serving's model_servers/:

- ``serve``: ``fmnist serve``, tensorflow_model_server's command line (main.cc), or the hand-off to the real binary;
- ``config``: ``ServerConfig``, the server's options (Server::Options);
- ``server``: ``start()`` and the running ``Server`` (Server::BuildAndStart);
- ``grpc_services``: PredictionService and ModelService over the core, errors mapped to gRPC statuses once;
- ``rest`` (with ``rest_json``): the REST API and Prometheus metrics over the same core;
- ``core``: ``ServingCore``, the request handlers (Predict, Classify, Regress, MultiInference, metadata, status,
  reload) over the model manager;
- ``models``: the ``ModelManager`` (ServerCore's versions, labels, polling, loading, unloading), over
  ``model_config`` (config checks, version folders, version policies) and ``loader`` (SavedModel, warmup);
- ``signature``, ``predict``, ``inference``: a loaded signature; Predict's and Classify/Regress/MultiInference's
  checks and results;
- ``batching``, ``request_log``, ``metrics``, ``protos``: BatchingParameters, logging_config, MonitoringConfig,
  and the config protos tensorflow-serving-api does not ship.

Commands over the client (:mod:`fmnist.common.client`): ``classify`` (``fmnist classify``) and ``label``
(``fmnist label``). ``models.config``, ``batching.config`` and ``monitoring.config`` are for the real
tensorflow/serving image.

Usage: ``from fmnist.serving.server import ServerConfig, start``
"""
