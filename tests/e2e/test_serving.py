"""Serving behaviour around inference: bundled examples, metrics, config.yaml, version policies."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

pytestmark = pytest.mark.e2e


def test_bundled_examples_serve_without_a_repository(tmp_path: Path) -> None:
    with run_server(None, tmp_path / "examples.log") as server:
        assert "serving the bundled examples" in server.log_text()
        with triton.InferenceServerClient(server.url) as client:
            index = {row["name"]: row["state"] for row in client.get_model_repository_index()}
            assert set(index.values()) == {"READY"}
            assert set(index) == {
                "add_sub",
                "mlp_classifier",
                "text_lower",
                "sentiment",
                "sentiment_tokenize",
                "sentiment_classify",
                "sentiment_label",
            }
            tensor = triton.InferInput("input", [2, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((2, 16), dtype=np.float32))
            assert client.infer("mlp_classifier", [tensor]).as_numpy("output").shape == (2, 4)
            assert client.get_model_config("mlp_classifier")["max_batch_size"] == 64
            reviews = ["Great phone, love it", "slow and broken", "it arrived on Tuesday"]
            text = triton.InferInput("TEXT", [3], "BYTES")
            text.set_data_from_numpy(np.array([r.encode() for r in reviews], dtype=object))
            labels = client.infer("sentiment", [text]).as_numpy("LABEL")
            assert [label.decode() for label in labels] == ["positive", "negative", "neutral"]


def test_metrics_count_success_failure_and_latency(server: Server) -> None:
    url = f"{server.base}/v2/models/add_sub/versions/1/infer"
    good = {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
            for name in ("INPUT0", "INPUT1")
        ]
    }
    before = _samples(server)
    for _ in range(3):
        assert httpx.post(url, json=good).status_code == 200
    assert httpx.post(url, json={"inputs": [{"name": "bogus"}]}).status_code == 400
    after = _samples(server)

    def delta(name: str) -> float:
        name = _canonical(name)
        return after.get(name, 0.0) - before.get(name, 0.0)

    labels = 'model="add_sub",version="1"'
    assert delta(f"modelport_inference_request_success_total{{{labels}}}") == 3
    assert delta(f"modelport_inference_count_total{{{labels}}}") == 3
    assert delta(f"modelport_request_duration_seconds_count{{{labels}}}") == 3
    assert delta(f"modelport_inference_compute_seconds_count{{{labels}}}") == 3
    failure = f'modelport_inference_request_failure_total{{{labels},reason="invalid_input"}}'
    assert delta(failure) == 1
    assert after['modelport_model_state{model="add_sub",state="READY",version="1"}'] == 1


def _samples(server: Server) -> dict[str, float]:
    reply = httpx.get(f"{server.base}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in reply.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[_canonical(name)] = float(value)
    return samples


def _canonical(series: str) -> str:
    """Sort the labels of one series so lookups do not depend on exposition order."""
    if "{" not in series:
        return series
    name, labels = series[:-1].split("{", 1)
    return f"{name}{{{','.join(sorted(labels.split(',')))}}}"


CONFIGURED = """\
max_batch_size: 4
inputs:
  - {name: INPUT0, datatype: FP32, shape: [-1, 16]}
version_policy: {specific: [1, 3]}
runtime: {intra_op_threads: 1, inter_op_threads: 1, graph_optimization_level: basic}
"""


def test_config_yaml_applies_and_bad_configs_are_reported(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2, 3):
        add_model(repo, "configured", onnx_models.add_sub("FP32", 16), version, CONFIGURED)
    add_model(repo, "typo", onnx_models.add_sub(), config="max_batch_sise: 4\n")
    add_model(
        repo,
        "contradiction",
        onnx_models.add_sub(),
        config="inputs:\n  - {name: INPUT0, datatype: INT32, shape: [-1, 16]}\n",
    )
    add_model(repo, "unknown_platform", onnx_models.add_sub(), config="platform: caffe\n")
    add_model(repo, "fine", onnx_models.add_sub())
    with (
        run_server(repo, tmp_path / "config.log") as server,
        httpx.Client(base_url=server.base) as client,
    ):
        index = client.post("/v2/repository/index").json()
        states = {(row["name"], row.get("version")): row for row in index}
        assert sorted(v for (n, v) in states if n == "configured") == ["1", "3"]
        assert states[("fine", "1")]["state"] == "READY"
        assert states[("typo", None)]["state"] == "UNAVAILABLE"
        assert "max_batch_sise" in states[("typo", None)]["reason"]
        assert (
            "config.yaml says input 'INPUT0' is INT32" in states[("contradiction", "1")]["reason"]
        )
        assert "unknown platform 'caffe'" in states[("unknown_platform", "1")]["reason"]

        config = client.get("/v2/models/configured/config").json()
        assert config["max_batch_size"] == 4
        assert config["version_policy"] == {"specific": {"versions": [1, 3]}}
        assert client.get("/v2/models/configured").json()["versions"] == ["1", "3"]
        body = {
            "inputs": [
                {"name": name, "datatype": "FP32", "shape": [5, 16], "data": [0.0] * 80}
                for name in ("INPUT0", "INPUT1")
            ]
        }
        reply = client.post("/v2/models/configured/infer", json=body)
        assert reply.status_code == 400
        assert "max_batch_size 4" in reply.json()["error"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_links_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    add_model(outside, "secret", onnx_models.add_sub())
    repo = tmp_path / "repo"
    add_model(repo, "fine", onnx_models.add_sub())
    (repo / "secret").symlink_to(outside / "secret", target_is_directory=True)
    (repo / "linked_file" / "1").mkdir(parents=True)
    (repo / "linked_file" / "1" / "model.onnx").symlink_to(outside / "secret" / "1" / "model.onnx")
    with run_server(repo, tmp_path / "links.log") as server:
        index = {
            (r["name"], r.get("version")): r
            for r in httpx.post(f"{server.base}/v2/repository/index").json()
        }
        assert ("secret", "1") not in index and ("secret", None) not in index
        assert index[("linked_file", "1")]["state"] == "FAILED"
        assert "links outside the model repository" in index[("linked_file", "1")]["reason"]
        assert httpx.get(f"{server.base}/v2/models/secret").status_code == 404
        assert "links outside the model repository" in server.log_text()
