"""Fashion-MNIST classification workflow: train → push → serve → batch.

The package ``fmnist`` holds the bottom layer (:mod:`fmnist.names`,
:mod:`fmnist.imagefile`, :mod:`fmnist.report`, :mod:`fmnist.quiet`) and the top
layer (:mod:`fmnist.cli`, the demo); ``pipeline``, ``serving`` and ``batch`` sit
in between and never import each other.
"""

__version__ = "0.1.0"
