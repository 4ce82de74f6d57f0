"""batch.inference: batches of images classified through a model handler, a rejected batch bisected down to its
bad files, and a failed batch told apart from a lost server; against fakes, so every path is reached on purpose."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.batch.inference import ImageBatches, Scores, predict_splitting_rejected
from fmnist.batch.outcomes import Classified, Failed, Reason
from fmnist.batch.outcomes import Image as Encoded
from fmnist.common import errors as serving_errors
from fmnist.common import names
from fmnist.common.errors import ServingError


def _fake_model(calls: list[int]):
    """Scores each image by its first byte; rejects a request holding a b"!" image, as the graph would."""

    def predict(encoded: list[bytes]) -> Scores:
        calls.append(len(encoded))
        if any(data.startswith(b"!") for data in encoded):
            raise serving_errors.InvalidArgument("Invalid PNG data", target="fake:1")
        probabilities = np.zeros((len(encoded), names.NUM_CLASSES), np.float32)
        probabilities[np.arange(len(encoded)), [data[0] % names.NUM_CLASSES for data in encoded]] = 1.0
        return Scores(probabilities, "m", 7)

    return predict


def _rejected(error: Exception) -> bool:
    return isinstance(error, ServingError) and error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_rejected_batch_is_bisected_so_its_good_images_are_still_classified():
    images = [Encoded(f"f{i}", bytes([i]) * 10, None) for i in range(16)]
    images[5] = Encoded("bad", b"!" * 10, None)
    calls: list[int] = []
    outcomes = predict_splitting_rejected(images, _fake_model(calls), _rejected, max_request_bytes=1 << 20)
    assert [o.path for o in outcomes] == [i.path for i in images]
    assert outcomes[5] == Failed("bad", Reason.REJECTED, "Invalid PNG data")
    assert all(
        isinstance(o, Classified) and o.class_id == i % 10 and o.model_version == 7
        for i, o in enumerate(outcomes)
        if i != 5
    )
    assert len(calls) <= 2 * 4 + 1  # bisection: about 2·log2(16), not 16 singles


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    bad=st.sets(st.integers(0, 29)),
    max_bytes=st.integers(1, 120),
)
def test_every_image_gets_exactly_one_outcome_in_order(sizes, bad, max_bytes):
    images = [Encoded(f"f{i}", (b"!" if i in bad else bytes([i])) * n, None) for i, n in enumerate(sizes)]
    calls: list[int] = []
    outcomes = predict_splitting_rejected(images, _fake_model(calls), _rejected, max_request_bytes=max_bytes)
    assert [o.path for o in outcomes] == [i.path for i in images]
    assert [isinstance(o, Failed) for o in outcomes] == [i in bad for i in range(len(images))]


def test_requests_are_split_by_bytes_and_other_errors_fail_the_job():
    images = [Encoded(f"f{i}", bytes([i]) * 100, None) for i in range(5)]
    calls: list[int] = []
    predict_splitting_rejected(images, _fake_model(calls), _rejected, max_request_bytes=250)
    assert calls == [2, 2, 1]

    def down(encoded):
        raise serving_errors.Unavailable("connection refused", target="host:1")

    with pytest.raises(ServingError, match="host:1"):
        predict_splitting_rejected(images, down, _rejected, max_request_bytes=1 << 20)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Images(ModelHandler):
    """A handler of encoded images that logs each request.

    b"bad" is rejected, b"boom" fails the model, b"gone" the server.
    """

    target = "host:1"

    def __init__(self):
        super().__init__()
        self.requests: list[list[bytes]] = []

    def load_model(self):
        return _Images  # anything RunInference can hold a weak reference to

    def run_inference(self, batch, model, inference_args=None):
        self.requests.append(list(batch))
        for marker, code in (
            (b"bad", grpc.StatusCode.INVALID_ARGUMENT),
            (b"boom", grpc.StatusCode.INTERNAL),
            (b"gone", grpc.StatusCode.UNAVAILABLE),
        ):
            if marker in batch:
                raise _RpcError(code, f"{code.name.lower()} here")
        return [PredictionResult(e, {names.OUTPUT_PROBABILITIES: np.eye(10)[len(e) % 10]}, "m:3") for e in batch]


def test_image_batches_bisect_a_rejected_batch_and_keep_read_failures_in_order():
    images = _Images()
    handler = ImageBatches(images, max_request_bytes=1 << 20)
    unreadable = Failed("u", Reason.UNREADABLE, "gone")
    batch = [Encoded("a", b"a", None), unreadable, Encoded("b", b"bad", None), Encoded("c", b"cc", None)]
    [outcomes] = handler.run_inference([batch], _Images)
    assert images.requests == [[b"a", b"bad", b"cc"], [b"a"], [b"bad", b"cc"], [b"bad"], [b"cc"]]
    assert [o.path for o in outcomes] == ["u", "a", "b", "c"]
    assert (
        outcomes[0] is unreadable
        and outcomes[2].reason == Reason.REJECTED
        and outcomes[2].detail == "invalid_argument here"
    )
    assert (outcomes[1].class_id, outcomes[1].model_name, outcomes[1].model_version, outcomes[3].class_id) == (
        1,
        "m",
        3,
        2,
    )


def test_image_batches_tell_a_failed_batch_from_a_lost_server():
    handler = ImageBatches(_Images(), max_request_bytes=1 << 20)
    [failed] = handler.run_inference([[Encoded("a", b"boom", None)]], _Images)
    assert failed == [Failed("a", Reason.INFERENCE_FAILED, "INTERNAL: internal here")]
    with pytest.raises(serving_errors.Unavailable, match="host:1: UNAVAILABLE: unavailable here"):
        handler.run_inference([[Encoded("a", b"gone", None)]], _Images)
