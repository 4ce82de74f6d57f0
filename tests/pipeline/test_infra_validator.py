"""The InfraValidator: a candidate is served in a sandboxed `fmnist serve` and must answer as in process."""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

from fmnist.common import names
from fmnist.pipeline import exporter, infra_validator, pusher


def _in_process(version_dir):
    loaded = tf.saved_model.load(str(version_dir))

    def expected(signature, inputs):
        outputs = loaded.signatures[signature](**{alias: tf.constant(value) for alias, value in inputs.items()})
        return {alias: tensor.numpy() for alias, tensor in outputs.items()}

    return expected


def test_a_candidate_that_answers_as_in_process_passes_and_one_that_differs_is_refused(models_dir):
    version_dir = models_dir / names.MODEL_NAME / "1"
    config = infra_validator.InfraConfig()
    result = infra_validator.run(config, version_dir, names.MODEL_NAME, _in_process(version_dir))
    assert result.passed and result.requests == 4, result
    assert "4 warmup requests answered over gRPC as in process" in result.reason and result.seconds > 0

    expected = _in_process(version_dir)

    def wrong(signature, inputs):
        outputs = expected(signature, inputs)
        return {**outputs, names.OUTPUT_PROBABILITIES: outputs[names.OUTPUT_PROBABILITIES][:, ::-1]}

    refused = infra_validator.run(config, version_dir, names.MODEL_NAME, wrong)
    assert not refused.passed and refused.requests == 0
    different = f"Predict {names.SERVING_DEFAULT} (batch of 1) answered a different probabilities than in process"
    assert refused.reason == different


def test_a_server_that_cannot_start_refuses_the_candidate_with_its_last_words(models_dir):
    config = infra_validator.InfraConfig(command=(sys.executable, "-c", "print('no model server here'); exit(3)"))
    never_asked = lambda signature, inputs: {}  # noqa: E731
    result = infra_validator.run(config, models_dir / names.MODEL_NAME / "1", names.MODEL_NAME, never_asked)
    assert not result.passed
    assert result.reason == "the model server exited with status 3: no model server here"


def test_a_candidate_whose_warmup_fails_in_the_server_is_not_pushed(tmp_path, capsys):
    # Exported with a pixel limit below its own warmup images' 28 x 28, every predict_images call fails
    # at run time: the sandboxed server refuses to load it, and the exporter pushes nothing.
    models, run = tmp_path / "models", tmp_path / "run"
    argv = ["--limit", "1000", "--epochs", "1", "--min-accuracy", "0", "--max-image-pixels", "100"]
    code = exporter.main([*argv, "--models-dir", str(models), "--run-dir", str(run)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: not pushed: InfraValidator: the model server could not load it: ")
    assert "image too large" in err[0]
    assert pusher.versions(models / names.MODEL_NAME) == []
    assert list((models / names.MODEL_NAME).iterdir()) == []  # no staging left either
    infra = json.loads((run / names.METRICS_FILE).read_text())["infra_validation"]
    assert not infra["passed"] and infra["reason"] in err[0] and infra["requests"] == 0


def test_the_warmup_requests_are_read_back_as_written(models_dir):
    requests = infra_validator.warmup_requests(models_dir / names.MODEL_NAME / "1")
    signatures = [r.model_spec.signature_name for r in requests]
    assert signatures == [names.SERVING_DEFAULT, names.PREDICT_IMAGES] * 2
    batch = [np.asarray(r.inputs[names.INPUT_IMAGES].tensor_shape.dim[0].size) for r in requests[::2]]
    assert batch == [1, 4]
