"""The TFX-shaped exporter: ExampleGen → Trainer → Evaluator → Calibrator → InfraValidator → Pusher.

Each stage is one module with a ``run(...)`` that depends only on its
arguments; :mod:`pipeline.exporter` chains them behind ``fmnist train``.
"""
