"""Framework runtimes end to end: torch, scikit-learn, XGBoost, LightGBM, Python models and a
pipeline, each served by a real `modelport serve` and compared with the framework run here."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pickle
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelport.examples import onnx_models
from tests import frameworks as fw
from tests.support import Server, run_server

CLASSIFY = onnx_models.mlp((fw.TOKENS, 16, 3), seed=11)
TORCH_SEED = 5

TORCH_CONFIG = """
    inputs:
      - {name: features, datatype: FP32, shape: [-1, 16]}
    outputs:
      - {name: logits, datatype: FP32, shape: [-1, 4]}
      - {name: best, datatype: INT64, shape: [-1]}
"""

TOKENIZE_CONFIG = """
    parameters: {lowercase: true}
    max_batch_size: 64
    dynamic_batching: {max_queue_delay: 5ms}
    instance_count: 2
    inputs:
      - {name: TEXT, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: FEATURES, datatype: FP32, shape: [-1, 8]}
      - {name: PID, datatype: INT64, shape: [-1]}
"""

LABELLER_CONFIG = """
    inputs:
      - {name: LOGITS, datatype: FP32, shape: [-1, 3]}
    outputs:
      - {name: LABEL, datatype: BYTES, shape: [-1]}
      - {name: SCORE, datatype: FP32, shape: [-1]}
"""

PIPELINE_CONFIG = """
    # text -> features (python) -> logits (onnx) -> label and score (python)
    inputs:
      - {name: TEXT, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: LABEL, datatype: BYTES, shape: [-1]}
      - {name: SCORE, datatype: FP32, shape: [-1]}
    pipeline:
      - model: tokenize
        inputs: {TEXT: TEXT}
        outputs: {FEATURES: features}
      - model: classify
        inputs: {input: features}
        outputs: {output: logits}
      - model: labeller
        inputs: {LOGITS: logits}
        outputs: {LABEL: LABEL, SCORE: SCORE}
"""


def build_repository(repo: Path) -> dict[str, Any]:
    """Every framework model the tests serve; returns the in-process originals."""
    originals: dict[str, Any] = {}
    module = fw.torch_mlp(TORCH_SEED)
    originals["torch"] = module
    fw.save_torchscript(
        module, fw.version_dir(repo, "torch_script", config=TORCH_CONFIG) / "model.pt"
    )
    fw.save_exported(module, fw.version_dir(repo, "torch_export") / "model.pt2")

    species = fw.sklearn_species_classifier()
    originals["species"] = species
    source = fw.version_dir(repo, "species") / "model.joblib"
    joblib.dump(species, source)
    digest = fw.sha256(source)
    (repo / "species" / "config.yaml").write_text(f"trust: true\nsha256: '{digest}'\n")
    joblib.dump(species, fw.version_dir(repo, "species_untrusted") / "model.joblib")
    joblib.dump(species, fw.version_dir(repo, "species_tampered") / "model.joblib")
    (repo / "species_tampered" / "config.yaml").write_text(f"trust: true\nsha256: '{'ab' * 32}'\n")

    forest = fw.sklearn_regressor()
    originals["forest"] = forest
    with (fw.version_dir(repo, "forest", config="trust: true\n") / "model.pkl").open("wb") as f:
        pickle.dump(forest, f)

    for name, model, filename in (
        ("xgb_binary", fw.xgboost_classifier(), "model.json"),
        ("xgb_multi", fw.xgboost_multiclass(), "model.ubj"),
    ):
        originals[name] = model
        model.save_model(str(fw.version_dir(repo, name) / filename))
    for name, model in (
        ("lgb_multi", fw.lightgbm_multiclass()),
        ("lgb_reg", fw.lightgbm_regressor()),
    ):
        originals[name] = model
        model.booster_.save_model(str(fw.version_dir(repo, name) / "model.txt"))

    (fw.version_dir(repo, "tokenize", config=TOKENIZE_CONFIG) / "model.py").write_text(fw.TOKENIZER)
    threaded = TOKENIZE_CONFIG + "    runtime: {executor: thread}\n"
    (fw.version_dir(repo, "tokenize_threaded", config=threaded) / "model.py").write_text(
        fw.TOKENIZER
    )
    (fw.version_dir(repo, "labeller", config=LABELLER_CONFIG) / "model.py").write_text(fw.LABELLER)
    crasher = """
        inputs: [{name: X, datatype: FP32, shape: [-1, 2]}]
        outputs: [{name: Y, datatype: FP32, shape: [-1, 2]}]
    """
    (fw.version_dir(repo, "crasher", config=crasher) / "model.py").write_text(fw.CRASHER)
    (fw.version_dir(repo, "classify") / "model.onnx").write_bytes(CLASSIFY.SerializeToString())
    (repo / "sentiment").mkdir()
    (repo / "sentiment" / "config.yaml").write_text(textwrap.dedent(PIPELINE_CONFIG))
    dangling = PIPELINE_CONFIG.replace("model: classify", "model: no_such_model")
    (repo / "dangling").mkdir()
    (repo / "dangling" / "config.yaml").write_text(textwrap.dedent(dangling))
    return originals


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    repo = tmp_path_factory.mktemp("frameworks")
    originals = build_repository(repo)
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with run_server(repo, log) as server:
        yield server, originals


@pytest.fixture(scope="module")
def server(served: tuple[Server, dict[str, Any]]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def originals(served: tuple[Server, dict[str, Any]]) -> dict[str, Any]:
    return served[1]


def infer_http(server: Server, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.url)
    wires = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else _v2(array.dtype)
        wire = httpclient.InferInput(name, list(array.shape), datatype)
        wire.set_data_from_numpy(array, binary_data=True)
        wires.append(wire)
    result = client.infer(model, wires)
    return {
        output["name"]: result.as_numpy(output["name"])
        for output in result.get_response()["outputs"]
    }


def infer_grpc(server: Server, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    wires = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else _v2(array.dtype)
        wire = grpcclient.InferInput(name, list(array.shape), datatype)
        wire.set_data_from_numpy(array)
        wires.append(wire)
    result = client.infer(model, wires)
    return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


def _v2(dtype: np.dtype[Any]) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64"}[np.dtype(dtype).name]


# ---- torch ----------------------------------------------------------------------------------


def assert_matches_torch(module: Any, x: np.ndarray, logits: np.ndarray, best: np.ndarray) -> None:
    expected_logits, expected_best = module(torch.from_numpy(x))
    np.testing.assert_allclose(logits, expected_logits.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(best, expected_best.numpy())


def test_torchscript_matches_torch(server: Server, originals: dict[str, Any]) -> None:
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    got = infer_http(server, "torch_script", {"features": x})
    assert_matches_torch(originals["torch"], x, got["logits"], got["best"])


def test_exported_program_carries_its_signature(server: Server, originals: dict[str, Any]) -> None:
    meta = httpx.get(f"{server.base}/v2/models/torch_export").json()
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_0", "output_1"]
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    got = infer_grpc(server, "torch_export", {"features": x})
    assert_matches_torch(originals["torch"], x, got["output_0"], got["output_1"])


# ---- scikit-learn ---------------------------------------------------------------------------


def test_sklearn_classifier_with_string_labels(server: Server, originals: dict[str, Any]) -> None:
    x, _ = fw.iris()
    rows = x[::15]
    got = infer_http(server, "species", {"input": rows})
    expected = originals["species"].predict(rows)
    assert [label.decode() for label in got["predict"]] == list(expected)
    np.testing.assert_allclose(got["predict_proba"], originals["species"].predict_proba(rows))


def test_sklearn_regressor_over_grpc(server: Server, originals: dict[str, Any]) -> None:
    x, _ = fw.breast_cancer()
    got = infer_grpc(server, "forest", {"input": x[:7]})
    np.testing.assert_allclose(got["predict"], originals["forest"].predict(x[:7]))


def test_pickles_load_only_when_trusted_and_pinned(server: Server) -> None:
    index = {
        row["name"]: row for row in httpx.post(f"{server.base}/v2/repository/index", json={}).json()
    }
    assert index["species"]["state"] == "READY"
    untrusted = index["species_untrusted"]
    assert untrusted["state"] != "READY"
    assert "trust: true" in untrusted["reason"] and "pickle" in untrusted["reason"]
    tampered = index["species_tampered"]
    assert tampered["state"] != "READY"
    assert "sha256" in tampered["reason"] and "ab" * 32 in tampered["reason"]
    answer = httpx.post(
        f"{server.base}/v2/models/species_untrusted/infer",
        json={"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [0] * 4}]},
    )
    assert answer.status_code in (400, 404, 503)


# ---- XGBoost and LightGBM -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xgb_binary", "xgb_multi"])
def test_xgboost_matches_xgboost(server: Server, originals: dict[str, Any], name: str) -> None:
    x, _ = fw.breast_cancer() if name == "xgb_binary" else fw.iris()
    rows = x[::20].astype(np.float32)
    got = infer_http(server, name, {"input": rows})
    model = originals[name]
    np.testing.assert_array_equal(got["predict"], model.predict(rows))
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(rows), rtol=1e-6)


def test_lightgbm_matches_lightgbm(server: Server, originals: dict[str, Any]) -> None:
    x, _ = fw.iris()
    got = infer_grpc(server, "lgb_multi", {"input": x[::10]})
    model = originals["lgb_multi"]
    np.testing.assert_array_equal(got["predict"], model.predict(x[::10]))
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(x[::10]), rtol=1e-9)
    x, _ = fw.breast_cancer()
    got = infer_http(server, "lgb_reg", {"input": x[:9]})
    np.testing.assert_allclose(got["predict"], originals["lgb_reg"].predict(x[:9]), rtol=1e-9)


# ---- Python models --------------------------------------------------------------------------

TEXTS = ["Great product, great price", "terrible", "it is OK I guess", "GREAT great"]


def test_python_model_bytes_in_numbers_out(server: Server) -> None:
    texts = np.array([t.encode() for t in TEXTS], dtype=object)
    got = infer_http(server, "tokenize", {"TEXT": texts})
    np.testing.assert_array_equal(got["FEATURES"], fw.tokenize(TEXTS))


def test_python_models_run_in_worker_processes_unless_told(server: Server) -> None:
    """They hold the GIL, so by default each instance is a process; `executor: thread` keeps
    them in the server."""
    texts = np.array([b"a"], dtype=object)
    worker = int(infer_http(server, "tokenize", {"TEXT": texts})["PID"][0])
    threaded = int(infer_http(server, "tokenize_threaded", {"TEXT": texts})["PID"][0])
    assert threaded == server.process.pid
    assert worker != server.process.pid
    assert "2 process instance(s)" in server.log_text()


def test_concurrent_requests_to_a_process_model_keep_their_own_rows(server: Server) -> None:
    def one(i: int) -> tuple[list[str], dict[str, Any]]:
        texts = [f"word{i} other{i % 3}", *(f"x{i} y" for _ in range(i % 3))]
        body = {
            "id": f"r{i}",
            "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "outputs": [{"name": "FEATURES"}],
        }
        return texts, httpx.post(f"{server.base}/v2/models/tokenize/infer", json=body).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(120)))
    for i, (texts, answer) in enumerate(results):
        assert answer["id"] == f"r{i}"
        (output,) = answer["outputs"]
        np.testing.assert_array_equal(
            np.array(output["data"], np.float32).reshape(output["shape"]), fw.tokenize(texts)
        )
    stats = httpx.get(f"{server.base}/v2/models/tokenize/stats").json()["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"]  # requests were batched


def test_a_crashing_worker_fails_its_request_and_is_replaced(server: Server) -> None:
    def call(value: float) -> httpx.Response:
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2], "data": [value] * 2}]}
        return httpx.post(f"{server.base}/v2/models/crasher/infer", json=body, timeout=60)

    assert call(1.0).json()["outputs"][0]["data"] == [2.0, 2.0]
    crashed = call(-1.0)
    assert crashed.status_code == 500
    assert "worker process" in crashed.json()["error"]
    assert call(3.0).json()["outputs"][0]["data"] == [6.0, 6.0]
    assert server.alive()


# ---- pipelines ------------------------------------------------------------------------------


def reference_sentiment(texts: list[str]) -> tuple[list[str], np.ndarray]:
    session = ort.InferenceSession(CLASSIFY.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": fw.tokenize(texts)})
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
    return [fw.LABELS[i] for i in logits.argmax(axis=1)], scores


def test_three_step_pipeline_serves_as_one_model(server: Server) -> None:
    labels, scores = reference_sentiment(TEXTS)
    texts = np.array([t.encode() for t in TEXTS], dtype=object)
    for infer in (infer_http, infer_grpc):
        got = infer(server, "sentiment", {"TEXT": texts})
        assert [label.decode() for label in got["LABEL"]] == labels
        np.testing.assert_allclose(got["SCORE"], scores, rtol=1e-5)
    meta = httpx.get(f"{server.base}/v2/models/sentiment").json()
    assert meta["platform"] == "ensemble"
    steps = httpx.get(f"{server.base}/v2/models/sentiment/config").json()["ensemble_scheduling"]
    assert [step["model_name"] for step in steps["step"]] == ["tokenize", "classify", "labeller"]
    assert steps["step"][1]["input_map"] == {"input": "features"}
    classify = httpx.get(f"{server.base}/v2/models/classify/stats").json()["model_stats"][0]
    assert classify["inference_count"] >= 2 * len(TEXTS)  # its step ran through the server


def test_pipeline_errors_name_the_step(server: Server) -> None:
    text = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    missing = httpx.post(f"{server.base}/v2/models/dangling/infer", json=text)
    assert missing.status_code == 404
    assert "pipeline 'dangling' step 2 ('no_such_model')" in missing.json()["error"]
    wrong = httpx.post(
        f"{server.base}/v2/models/sentiment/infer",
        json={"inputs": [{"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
    )
    assert wrong.status_code == 400 and "TEXT" in wrong.json()["error"]
    assert server.alive()


def test_workers_exit_when_the_server_is_killed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (fw.version_dir(repo, "tokenize", config=TOKENIZE_CONFIG) / "model.py").write_text(fw.TOKENIZER)
    with run_server(repo, tmp_path / "server.log") as server:
        children = _children(server.process.pid)
        workers = [pid for pid in children if "spawn_main" in _command(pid)]
        assert len(workers) == 2  # instance_count: 2, both started at load
        server.process.kill()  # no chance to stop its workers itself
        server.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _running(pid)], "processes outlived their server"


def _children(pid: int) -> list[int]:
    """Every thread's children: workers are spawned from the thread that loaded the model."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in status.read_text()
    return True
