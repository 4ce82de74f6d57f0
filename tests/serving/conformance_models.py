"""TF Serving's own test models, rebuilt here with TensorFlow the way its export scripts build them.

TF Serving's tests run against ``half_plus_two`` / ``half_plus_three``
(``tensorflow_serving/example/saved_model_half_plus_two.py``: y = a*x + b read
from tf.Examples, with predict, classify and regress signatures), a stateful
counter (``export_counter.py``) and TF2 / Keras exports. Nothing binary is
committed: each session builds them under a tmp dir.

Usage::

    paths = build_all(tmp_path_factory.mktemp("tfs_models"))
    paths.half_plus_two  # base path holding version folder 00000123
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

TWO_VERSIONS = ("00000123", "00000124")  # zero-padded folders, as TF Serving's testdata has them


@dataclass(frozen=True)
class ConformanceModels:
    half_plus_two: Path  # version 123 (folder 00000123); y = 0.5 x + 2
    half_plus_two_2_versions: Path  # versions 123 and 124 (folders 00000123, 00000124)
    half_plus_three: Path  # version 123; y = 0.5 x + 3
    counter: Path  # version 1; get_counter, incr_counter, incr_counter_by, reset_counter
    tf2: Path  # version 1; tf.functions y = 0.5 x + 2: serving_default (x:[None, 1]), regress/classify_x_to_y
    keras: Path  # version 1; Dense(1) with weight 0.5 and bias 2, exported by Keras
    no_shape: Path  # version 1; predict signature whose input declares no shape


def half_plus(path: Path, b: float) -> None:
    """saved_model_half_plus_two.py's graph: a=0.5, b, c=3; x and x2 parsed from tf.Examples."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        a = tf.compat.v1.Variable(0.5, name="a")
        b_var = tf.compat.v1.Variable(b, name="b")
        c = tf.compat.v1.Variable(3.0, name="c")
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example")
        features = {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
        }
        parsed = tf.io.parse_example(serialized, features)
        for column in parsed.values():  # [batch, 1], as TF1's parse_example inferred it
            column.set_shape([None, 1])
        x = tf.identity(parsed["x"], name="x")
        x2 = tf.identity(parsed["x2"], name="x2")
        y = tf.add(tf.multiply(a, x), b_var, name="y")
        y2 = tf.add(tf.multiply(a, x), c, name="y2")
        y3 = tf.add(tf.multiply(a, x2), c, name="y3")
        info = tf.compat.v1.saved_model.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
        predict, classify, regress = (
            tf.saved_model.PREDICT_METHOD_NAME,
            tf.saved_model.CLASSIFY_METHOD_NAME,
            tf.saved_model.REGRESS_METHOD_NAME,
        )
        signatures = {
            "serving_default": sig({"x": info(x)}, {"y": info(y)}, predict),
            "classify_x_to_y": sig({"inputs": info(serialized)}, {"scores": info(y)}, classify),
            "regress_x_to_y": sig({"inputs": info(serialized)}, {"outputs": info(y)}, regress),
            "regress_x_to_y2": sig({"inputs": info(serialized)}, {"outputs": info(y2)}, regress),
            "regress_x2_to_y3": sig({"inputs": info(x2)}, {"outputs": info(y3)}, regress),
            "classify_x2_to_y3": sig({"inputs": info(x2)}, {"scores": info(y3)}, classify),
        }
        _save_v1(session, path, signatures)


def _save_v1(session, path: Path, signatures: dict) -> None:
    """A TF1 SavedModel of ``session``'s graph with ``signatures``, as TF Serving's export scripts write theirs."""
    session.run(tf.compat.v1.global_variables_initializer())
    builder = tf.compat.v1.saved_model.Builder(str(path))
    builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map=signatures)
    builder.save()


def _counter(path: Path) -> None:
    """export_counter.py's stateful graph: one int counter, four signatures."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        counter = tf.compat.v1.Variable(0.0, name="counter", use_resource=False)  # TF1's, whose assigns return values
        delta = tf.compat.v1.placeholder(tf.float32, name="delta")
        info = tf.compat.v1.saved_model.build_tensor_info
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
        predict = tf.saved_model.PREDICT_METHOD_NAME
        signatures = {
            "get_counter": sig({}, {"output": info(counter.read_value())}, predict),
            "incr_counter": sig({}, {"output": info(tf.compat.v1.assign_add(counter, 1.0))}, predict),
            "incr_counter_by": sig(
                {"delta": info(delta)}, {"output": info(tf.compat.v1.assign_add(counter, delta))}, predict
            ),
            "reset_counter": sig({}, {"output": info(tf.compat.v1.assign(counter, 0.0))}, predict),
        }
        _save_v1(session, path, signatures)


def _no_shape(path: Path) -> None:
    """A predict signature over a placeholder of unknown shape: any shape is the session's to take."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        x = tf.compat.v1.placeholder(tf.float32, shape=None, name="x")
        y = tf.add(tf.multiply(0.5, x), 2.0, name="y")
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y})
        _save_v1(session, path, {"serving_default": signature})


_EXAMPLES = tf.TensorSpec([None], tf.string, name="inputs")  # serialized tf.Examples


class _HalfPlusTwo(tf.Module):
    """saved_model_half_plus_two_tf2's functions: predict over x, regress and classify over tf.Examples."""

    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        return {"y": self.a * x + self.b}

    def _y(self, serialized):
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        return self.a * x + self.b

    @tf.function(input_signature=[_EXAMPLES])
    def regress(self, inputs):
        return {"outputs": self._y(inputs)}

    @tf.function(input_signature=[_EXAMPLES])
    def classify(self, inputs):
        return {"scores": self._y(inputs)}


def _tf2(path: Path) -> None:
    """Each signature its own function, fed through its own placeholder (regress_x_to_y_inputs:0, ...)."""
    module = _HalfPlusTwo()
    signatures = {"serving_default": module.serve, "regress_x_to_y": module.regress, "classify_x_to_y": module.classify}
    tf.saved_model.save(module, str(path), signatures=signatures)


def _keras(path: Path) -> None:
    inputs = tf.keras.Input(shape=(1,), name="x")
    dense = tf.keras.layers.Dense(1, name="y")
    model = tf.keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[0.5]], np.float32), np.array([2.0], np.float32)])
    model.export(str(path), verbose=False)


def build_all(root: Path) -> ConformanceModels:
    """Every test model under ``root``, each in its own base path of numeric version folders."""
    models = ConformanceModels(
        half_plus_two=root / "saved_model_half_plus_two",
        half_plus_two_2_versions=root / "saved_model_half_plus_two_2_versions",
        half_plus_three=root / "saved_model_half_plus_three",
        counter=root / "saved_model_counter",
        tf2=root / "saved_model_half_plus_two_tf2",
        keras=root / "saved_model_half_plus_two_keras",
        no_shape=root / "saved_model_no_shape",
    )
    half_plus(models.half_plus_two / "00000123", 2.0)
    for version in TWO_VERSIONS:
        half_plus(models.half_plus_two_2_versions / version, 2.0)
    half_plus(models.half_plus_three / "00000123", 3.0)
    _counter(models.counter / "1")
    _tf2(models.tf2 / "1")
    _keras(models.keras / "1")
    _no_shape(models.no_shape / "1")
    return models
