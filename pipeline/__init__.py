"""The TFX-shaped exporter, ``fmnist train``: ExampleGen → Trainer → Evaluator → Calibrator → InfraValidator
→ Pusher.

One module per stage, each entry point depending only on its arguments:
``data`` (ExampleGen: the four IDX files, validated; ``data.load``),
``trainer`` (``trainer.run``, over ``model``: the profiles' networks and
recipes), ``evaluator`` (``evaluator.run``: held-out metrics and the blessing),
``export`` (the serving graph, its signatures and warmup records), ``pusher``
(``pusher.push``: the versioned SavedModel, with ``model_card``) and
``plots``; ``exporter`` chains them behind ``fmnist train``, and ``images`` is
``fmnist images``. A floor: it imports :mod:`fmnist.common`, never
:mod:`fmnist.serving` or :mod:`fmnist.batch`.

Usage: ``fmnist train --profile mlp``; ``from fmnist.pipeline import exporter``
"""
