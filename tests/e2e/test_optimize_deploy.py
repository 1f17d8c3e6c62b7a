"""`modelport optimize --deploy REPOSITORY/NAME` creates a repository that does not exist yet, as
`modelport deploy` does; a repository path that is a file is refused, naming it. A tiny MLP and
a short benchmark keep it fast."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modelport.examples import onnx_models
from tests.support import run_cli

pytestmark = pytest.mark.e2e


cli = run_cli


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    onnx_models.save(onnx_models.mlp((8, 16, 4), seed=3), str(tmp_path / "tiny.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=rng.integers(0, 4, 64))
    return tmp_path


def optimize_into(workdir: Path, target: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "optimize",
        "tiny.onnx",
        "--graph",
        "basic",
        "--eval",
        "val.npz",
        "--deploy",
        target,
        "-o",
        "tiny.opt.onnx",
        "--bench-seconds",
        "0.05",
        "--quiet",
        cwd=workdir,
    )


def test_deploy_creates_a_repository_that_does_not_exist(workdir: Path) -> None:
    done = optimize_into(workdir, "new/models/tiny")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (workdir / "new" / "models" / "tiny" / "1" / "model.onnx").is_file()
    report = json.loads((workdir / "tiny.opt.report.json").read_text())
    assert report["deployed"]["version"] == 1


def test_a_repository_that_is_a_file_is_refused(workdir: Path) -> None:
    (workdir / "models").write_text("not a directory")
    done = optimize_into(workdir, "models/tiny")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the repository models is not a directory" in done.stderr
