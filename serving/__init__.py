"""Serving: TF Serving configuration, an embedded TF-Serving-conformant server, and its client.

Server side: ``serving.server`` (``fmnist serve``; start/run/main) over
``models`` (versions, policies, polling, loading, warmup), ``predict``
(validation, tensors, TF Serving's errors), ``inference`` (Classify, Regress,
MultiInference), ``batching`` (BatchingParameters), ``request_log``
(logging_config: PredictionLog files), ``rest`` and ``metrics``. Client side:
``client`` (the library), ``classify`` (``fmnist classify``) and ``label``
(``fmnist label``), over ``apis`` (TF Serving's protos without TensorFlow's
runtime) and ``tensors``. ``models.config``, ``batching.config`` and
``monitoring.config`` are for the real tensorflow/serving image.

Usage: ``from fmnist.serving.server import ServerConfig, start``
"""
