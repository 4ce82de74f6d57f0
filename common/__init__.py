"""The ground floor: what every part of fmnist shares, importing nothing of the floors above.

``names`` (model name, signature keys, tensor aliases, class names, ports),
``imagefile`` (the header check and the limits on an image, and the record
reported per file), ``report`` (accuracy, per-class metrics, confusion-matrix
PNG), ``quiet`` (TensorFlow without its start-up banner), ``errors`` (the
serving errors: one type per gRPC status, naming its HTTP status), and the
client side of TF Serving's API: ``apis`` (its protos without TensorFlow's
runtime), ``tensors`` (TensorProto ↔ numpy) and ``client`` (the gRPC client
library, :class:`~fmnist.common.client.PredictionClient`).

Usage: ``from fmnist.common.client import PredictionClient``
"""
