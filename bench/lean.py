"""The lean loop: the least a user's own script does to classify a folder, the anchor ``fmnist batch`` is measured by.

A thread pool reads the files; batches of 64 encoded images go to the model's
``predict_images`` signature (input ``image_bytes``), with up to ``--in-flight``
``Predict`` requests outstanding (1 is how ``RunInference`` calls a model); one
JSON line per file (path, class id, probabilities, version) is written with
orjson. In-process, the same batches call the SavedModel's signature directly.
It keeps no errors output, no summary, no checkpoints: it is the floor, not a
tool.

Usage::

    python bench/lean.py --input images/ --output lean.jsonl --server localhost:8500 --in-flight 4
    python bench/lean.py --input images/ --output lean.jsonl --model-dir models/fashion_mnist/1

It prints one JSON object: files, seconds, images/s, client CPU µs per file and
peak RSS (MiB). ``bench/batch.py`` imports :func:`served` and :func:`in_process`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

BATCH = 64
SIGNATURE = "predict_images"


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _batches(paths: Sequence[str], readers: ThreadPoolExecutor) -> Iterator[tuple[Sequence[str], list[bytes]]]:
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        yield chunk, list(readers.map(_read, chunk))


def _write(out, chunk: Sequence[str], probabilities, class_ids, version: int) -> None:
    out.write(
        b"".join(
            orjson.dumps(
                {"path": p, "class_id": int(c), "probabilities": row.tolist(), "model_version": version},
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for p, c, row in zip(chunk, class_ids, probabilities, strict=True)
        )
    )


def _array(tensor, dtype, field: str):
    """A numeric TensorProto's values, packed (``tensor_content``) or repeated, as TF Serving may send either."""
    import numpy as np

    return (
        np.frombuffer(tensor.tensor_content, dtype)
        if tensor.tensor_content
        else np.array(getattr(tensor, field), dtype)
    )


def _measured(run) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    files = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "files": files,
        "seconds": round(wall, 3),
        "images_per_s": round(files / wall, 1),
        "cpu_us_per_file": round(cpu / files * 1e6, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def served(paths: Sequence[str], output: str, target: str, in_flight: int, model_name: str = "fashion_mnist") -> dict:
    """Classify ``paths`` through the server at ``target`` with ``in_flight`` requests outstanding."""
    import grpc
    import numpy as np

    # TF Serving's own protos, without TensorFlow's runtime (which a client has no use for)
    from fmnist.common.apis import predict_pb2, prediction_service_pb2_grpc

    def run() -> int:
        channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        pending: collections.deque = collections.deque()

        def finish(out) -> None:
            chunk, future = pending.popleft()
            response = future.result()
            probabilities = _array(response.outputs["probabilities"], np.float32, "float_val")
            class_ids = _array(response.outputs["class_ids"], np.int64, "int64_val")
            _write(out, chunk, probabilities.reshape(len(chunk), -1), class_ids, response.model_spec.version.value)

        with open(output, "wb") as out, ThreadPoolExecutor(8) as readers:
            for chunk, data in _batches(paths, readers):
                request = predict_pb2.PredictRequest()
                request.model_spec.name, request.model_spec.signature_name = model_name, SIGNATURE
                tensor = request.inputs["image_bytes"]
                tensor.dtype = 7  # DT_STRING
                tensor.tensor_shape.dim.add().size = len(data)
                tensor.string_val.extend(data)
                pending.append((chunk, stub.Predict.future(request, timeout=60)))
                if len(pending) >= in_flight:
                    finish(out)
            while pending:
                finish(out)
        channel.close()
        return len(paths)

    return _measured(run)


def in_process(paths: Sequence[str], output: str, model_dir: str) -> dict:
    """Classify ``paths`` with the SavedModel at ``model_dir`` loaded in this process."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures[SIGNATURE]
    version = int(Path(model_dir).name) if Path(model_dir).name.isdigit() else 0
    signature(image_bytes=tf.constant([_read(paths[0])] * BATCH))  # traced once, before the clock starts

    def run() -> int:
        with open(output, "wb") as out, ThreadPoolExecutor(8) as readers:
            for chunk, data in _batches(paths, readers):
                outputs = signature(image_bytes=tf.constant(data))
                _write(out, chunk, outputs["probabilities"].numpy(), outputs["class_ids"].numpy(), version)
        return len(paths)

    return _measured(run)


def image_paths(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/lean.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a folder of PNG files (searched recursively)")
    parser.add_argument("--output", required=True, help="the JSON-lines file to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="HOST:PORT of a TF Serving gRPC API")
    source.add_argument("--model-dir", help="a pushed version's folder, loaded in this process")
    parser.add_argument("--in-flight", type=int, default=4, help="Predict requests outstanding (default 4)")
    args = parser.parse_args(argv)
    paths = image_paths(args.input)
    if not paths:
        parser.error(f"no PNG file under {args.input}")
    if args.server:
        result = served(paths, args.output, args.server, args.in_flight)
    else:
        result = in_process(paths, args.output, args.model_dir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
