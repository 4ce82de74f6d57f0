"""Serving: TF Serving configuration, an embedded TF-Serving-conformant server, and its client.

Server side: ``serving.server`` (``fmnist serve``; start/run/main) over
``models`` (versions, policies, polling, loading, warmup), ``predict``
(validation, tensors, TF Serving's errors), ``inference`` (Classify, Regress,
MultiInference), ``batching`` (BatchingParameters),
``rest`` and ``metrics``. ``models.config``, ``batching.config`` and
``monitoring.config`` are for the real tensorflow/serving image.

Usage: ``from serving.server import ServerConfig, start``
"""
