"""The ground floor: what every part of fmnist shares, importing nothing of the floors above.

``names`` (model name, signature keys, tensor aliases, class names, ports),
``imagefile`` (the header check and the limits on an image), ``report``
(accuracy, per-class metrics, confusion-matrix PNG), ``quiet`` (TensorFlow
without its start-up banner), and the client side of TF Serving's API:
``apis`` (its protos without TensorFlow's runtime), ``tensors``
(TensorProto ↔ numpy) and ``client`` (the gRPC client library).
"""
