"""``fmnist batch``: classify folders of image files in bulk with Apache Beam.

The job (:mod:`batch.job`) reads files with Beam's file IO (:mod:`batch.io`),
classifies them in batches through the served model or in-process with
``RunInference`` (:mod:`batch.inference`), and writes sharded records, an
``errors`` output and a summary (:mod:`batch.summary`).
:class:`TFServingModelHandler` (:mod:`batch.tfserving`) is a RunInference
model handler for any model behind TF Serving's gRPC API, usable on its own.
``fmnist compare`` (:mod:`batch.compare`) is the same kind of job sending
every batch to two served versions and comparing their answers.

Usage: ``fmnist batch --input images/ --output out/ --server localhost:8500``;
``fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline 1 --candidate 2``;
``from fmnist.batch import TFServingModelHandler``
"""

from fmnist.batch.tfserving import TFServingModelHandler

__all__ = ["TFServingModelHandler"]
