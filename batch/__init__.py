"""``fmnist batch`` and ``fmnist compare``: classify folders of image files in bulk with Apache Beam.

The commands (:mod:`batch.job`, :mod:`batch.compare`) parse their options
(:mod:`batch.options`) and launch (:mod:`batch.launcher`: the pipeline, its
run, Ctrl-C, and failures as types, :mod:`batch.errors`, each with its exit
code). Their pipelines (:mod:`batch.job_steps`, :mod:`batch.compare_steps`)
are composite transforms over shared steps (:mod:`batch.steps`): files are
read and header-checked on the workers (:mod:`batch.readers`), classified in
batches through the served model or in-process, several batches at once
(:mod:`batch.inference`), and written as sharded records
(:mod:`batch.records`) into an output folder whose rules, scratch and
``--resume`` checkpoints are :mod:`batch.output`'s; the launcher writes the
summary (:mod:`batch.summary`, :mod:`batch.comparison`) and ``report.html``
(:mod:`batch.report`). :class:`TFServingModelHandler` (:mod:`batch.tfserving`)
is a RunInference model handler for any model behind TF Serving's gRPC API,
usable on its own.

Usage: ``fmnist batch --input images/ --output out/ --server localhost:8500``;
``fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline 1 --candidate 2``;
``from fmnist.batch import TFServingModelHandler``
"""

from fmnist.batch.tfserving import TFServingModelHandler

__all__ = ["TFServingModelHandler"]
