"""Beam's Spark and Flink job servers, and a Spark standalone cluster, started on loopback.

For ``tests/test_engines.py``: :mod:`engines.cluster` builds the commands,
:mod:`engines.processes` starts and stops them; ``engines/sdk_worker.py`` is
the Python SDK worker the engines start. ``.ci/run`` fetches what they need.
"""
