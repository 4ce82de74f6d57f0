"""Fashion-MNIST in the shape of TFX + TensorFlow Serving + Apache Beam: train → push → serve → batch.

One import name over the repository's folders (setuptools ``package-dir``), in layers:

- :mod:`fmnist.common` (``common/``), the ground floor every part may import:
  the shared names, the image header check, reports, and the client side of
  TF Serving's API (its protos without TensorFlow's runtime, the gRPC client).
- :mod:`fmnist.pipeline` (``pipeline/``: ``fmnist train``, ``fmnist images``),
  :mod:`fmnist.serving` (``serving/``: ``fmnist serve``, ``fmnist classify``,
  ``fmnist label``) and :mod:`fmnist.batch` (``batch/``: ``fmnist batch``,
  ``fmnist compare``), the three floors: each imports :mod:`fmnist.common` and
  never another floor, so the server hosts any SavedModel and the batch job
  reaches the model only through the serving client.
- This package is the top layer: :mod:`fmnist.cli` (the ``fmnist`` command,
  which imports a floor only when its subcommand runs) and :mod:`fmnist.demo`.

Usage: ``fmnist --help``; README.md and docs/ describe each floor.
"""

__version__ = "0.1.0"
