"""TensorFlow runtime end to end: a SavedModel (numbers, and strings both ways) and Keras files,
served by a real `modelport serve` and compared with TensorFlow run here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tests import frameworks as fw  # noqa: E402
from tests.e2e.test_frameworks import infer_grpc, infer_http  # noqa: E402
from tests.support import Server, run_server  # noqa: E402


class Scorer(tf.Module):
    """Two named inputs, two named outputs, and a string model in the same SavedModel."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(3)
        self.w = tf.Variable(rng.normal(size=(6, 3)).astype(np.float32))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="dense"),
            tf.TensorSpec([None, 2], tf.float32, name="extra"),
        ]
    )
    def score(self, dense: Any, extra: Any) -> dict[str, Any]:
        logits = tf.matmul(tf.concat([dense, extra], axis=1), self.w)
        return {"logits": logits, "best": tf.argmax(logits, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def shout(self, text: Any) -> dict[str, Any]:
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}


def keras_model() -> Any:
    features = keras.Input(shape=(5,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(features)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    keras.utils.set_random_seed(1)
    return keras.Model(features, probs)


@pytest.fixture(scope="module")
def tf_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    repo = tmp_path_factory.mktemp("tf")
    scorer = Scorer()
    saved = fw.version_dir(repo, "scorer") / "model.savedmodel"
    tf.saved_model.save(scorer, str(saved), signatures={"serving_default": scorer.score})
    shout = fw.version_dir(repo, "shout", config="parameters: {signature_name: shout}\n")
    tf.saved_model.save(scorer, str(shout / "model.savedmodel"), signatures={"shout": scorer.shout})
    model = keras_model()
    model.save(fw.version_dir(repo, "keras_probs") / "model.keras")
    model.save(fw.version_dir(repo, "keras_h5") / "model.h5")  # Keras' legacy format
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with run_server(repo, log) as server:
        yield server, {"scorer": scorer, "keras": model}


def test_saved_model_signature_and_outputs(tf_served: tuple[Server, dict[str, Any]]) -> None:
    server, originals = tf_served
    meta = httpx.get(f"{server.base}/v2/models/scorer").json()
    assert meta["platform"] == "tensorflow_savedmodel"
    assert {i["name"]: i["shape"] for i in meta["inputs"]} == {"dense": [-1, 4], "extra": [-1, 2]}
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(6, 4)).astype(np.float32)
    extra = rng.normal(size=(6, 2)).astype(np.float32)
    expected = originals["scorer"].score(dense, extra)
    for infer in (infer_http, infer_grpc):
        got = infer(server, "scorer", {"dense": dense, "extra": extra})
        np.testing.assert_allclose(got["logits"], expected["logits"].numpy(), rtol=1e-5)
        np.testing.assert_array_equal(got["best"], expected["best"].numpy())


def test_saved_model_strings_both_ways(tf_served: tuple[Server, dict[str, Any]]) -> None:
    server, _ = tf_served
    text = np.array(["modelport", "ünïcode", ""], dtype=object)
    got = infer_http(server, "shout", {"text": np.array([t.encode() for t in text], object)})
    assert [value.decode() for value in got["upper"]] == ["MODELPORT", "üNïCODE", ""]
    np.testing.assert_array_equal(got["length"], [9, 9, 0])  # tf counts bytes


def test_keras_file(tf_served: tuple[Server, dict[str, Any]]) -> None:
    server, originals = tf_served
    x = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    expected = np.asarray(originals["keras"](x, training=False))
    for name in ("keras_probs", "keras_h5"):
        got = infer_grpc(server, name, {"features": x})
        np.testing.assert_allclose(got["probs"], expected, rtol=1e-5, atol=1e-7)
    meta = httpx.get(f"{server.base}/v2/models/keras_probs").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}]
