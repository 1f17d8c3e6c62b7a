"""The optimization commands as a user runs them: convert a torch model, quantize it within an
accuracy budget into a repository, serve what was deployed; a destructive setting is refused
with exit code 3 and deploys nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.digits import Digits, mlp, train
from tests.frameworks import save_torchscript
from tests.support import run_cli, run_server

pytestmark = pytest.mark.e2e


cli = run_cli


@pytest.fixture(scope="module")
def workdir(digit_data: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("optimize-cli")
    save_torchscript(train(mlp(128), digit_data.train), work / "model.pt")
    np.savez(work / "sample.npz", x=digit_data.val.x[:32])
    np.savez(work / "calib.npz", x=digit_data.train.x[:128])
    np.savez(work / "val.npz", x=digit_data.val.x, y=digit_data.val.labels())
    np.savez(work / "train.npz", x=digit_data.train.x, y=digit_data.train.labels())
    (work / "models").mkdir()
    return work


def ensure_onnx(workdir: Path) -> None:
    """The converted model, for a test run on its own."""
    if not (workdir / "model.onnx").exists():
        done = cli(
            "convert", "model.pt", "--example-input", "sample.npz", "-o", "model.onnx", cwd=workdir
        )
        assert done.returncode == 0, done.stderr


def test_convert_quantize_deploy_and_serve(workdir: Path, digit_data: Digits):
    done = cli(
        "convert", "model.pt", "--example-input", "sample.npz", "-o", "model.onnx", cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    assert "max abs diff" in done.stderr
    assert json.loads((workdir / "model.convert.json").read_text())["max_abs_diff"] < 1e-4

    done = cli(
        "optimize",
        "model.onnx",
        "--quantize",
        "int8-static",
        "--calibration",
        "calib.npz",
        "--eval",
        "val.npz",
        "--max-accuracy-drop",
        "1.0",
        "--deploy",
        "models/digits",
        "--label",
        "canary",
        "--quiet",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert "int8-static minmax" in done.stdout and "within the budget" in done.stdout
    result = workdir / "model.int8-static-minmax.onnx"
    report = json.loads((workdir / "model.int8-static-minmax.report.json").read_text())
    assert report["gate"]["passed"] and report["deployed"]["version"] == 1
    assert (workdir / "model.int8-static-minmax.report.png").read_bytes()[:4] == b"\x89PNG"
    version = workdir / "models" / "digits" / "1"
    assert (version / "model.onnx").read_bytes() == result.read_bytes()

    session = ort.InferenceSession(str(result), providers=["CPUExecutionProvider"])
    x = digit_data.val.x[:5]
    expected = session.run(None, {"input": x})[0]
    with run_server(workdir / "models", workdir / "server.log") as server:
        reply = httpx.post(
            f"{server.base}/v2/models/digits/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [5, 64],
                        "data": x.ravel().tolist(),
                    }
                ]
            },
        )
        assert reply.status_code == 200, reply.text
        served = np.array(reply.json()["outputs"][0]["data"], np.float32).reshape(5, 10)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_gate_refusal_exits_3_and_deploys_nothing(workdir: Path):
    ensure_onnx(workdir)
    before = sorted(p.name for p in (workdir / "models").rglob("*"))
    done = cli(
        "optimize",
        "model.onnx",
        "--prune",
        "0.99",
        "--eval",
        "val.npz",
        "--deploy",
        "models/digits",
        "-o",
        "wrecked.onnx",
        "--quiet",
        cwd=workdir,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "not deployed" in done.stderr and "beyond the budget of 1" in done.stderr
    assert sorted(p.name for p in (workdir / "models").rglob("*")) == before
    assert json.loads((workdir / "wrecked.report.json").read_text())["gate"]["passed"] is False


def test_distill_reports_teacher_and_student(workdir: Path):
    ensure_onnx(workdir)
    done = cli(
        "distill",
        "model.onnx",
        "--student",
        "mlp:32",
        "--data",
        "train.npz",
        "--eval",
        "val.npz",
        "--epochs",
        "20",
        "-o",
        "student.onnx",
        "--quiet",
        "--max-accuracy-drop",
        "5",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((workdir / "student.report.json").read_text())
    teacher, student = report["variants"]
    assert (teacher["name"], student["name"]) == ("teacher", "student")
    assert teacher["size_bytes"] > 4 * student["size_bytes"]
    assert student["notes"]["parameters"] == 64 * 32 + 32 + 32 * 10 + 10


def test_bad_usage_is_named(workdir: Path):
    done = cli(
        "optimize", "model.pt", "--quantize", "int8-dynamic", "--deploy", "models/x", cwd=workdir
    )
    assert done.returncode != 0 and "--deploy needs --eval" in done.stderr
    done = cli(
        "convert", "missing.joblib", "--example-input", "sample.npz", "-o", "o.onnx", cwd=workdir
    )
    assert done.returncode == 1 and "does not exist" in done.stderr
