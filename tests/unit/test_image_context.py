"""`modelport build`'s context: the Dockerfile passes checkov, installs only the extras the
models need, in layers that keep a model change from reinstalling packages, runs as a
non-root user with a health check; the models are copied as the server would see them."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from modelport.deploy.build_context import ContextError, make_context
from modelport.deploy.image import health_probe
from modelport.deploy.wheel import PackagingError, build_wheel, project_source
from modelport.examples import onnx_models
from tests.support import add_model, run_cli

DEPLOY_CHECKS = Path(sys.prefix) / "deploy-checks" / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """modelport's wheel, built once from this checkout (as `modelport build` does)."""
    source = project_source()
    assert source is not None, "modelport is not installed from this checkout"
    return build_wheel(source, tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_model(root, "add_sub", onnx_models.add_sub("FP32", 4))
    return root


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def requirement_names(text: str) -> set[str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {Requirement(line).name.lower() for line in lines}


def test_only_the_extras_the_models_need(tmp_path: Path, repo: Path, wheel: Path) -> None:
    onnx_only = make_context(repo, "demo:1", tmp_path / "onnx", wheel=wheel)
    names = requirement_names((onnx_only.directory / "requirements.txt").read_text())
    assert {"numpy", "onnxruntime", "starlette", "uvicorn"} <= names
    assert not names & {"torch", "scikit-learn", "joblib", "xgboost-cpu", "lightgbm", "redis"}
    assert onnx_only.plan.extras == ()

    forest = repo / "forest" / "1"
    forest.mkdir(parents=True)
    (forest / "model.joblib").write_bytes(b"not loaded here")
    with_sklearn = make_context(repo, "demo:2", tmp_path / "sk", wheel=wheel, extras=["queue"])
    names = requirement_names((with_sklearn.directory / "requirements.txt").read_text())
    assert {"scikit-learn", "joblib", "redis", "nats-py"} <= names
    assert not names & {"torch", "tensorflow-cpu", "lightgbm"}
    assert with_sklearn.plan.extras == ("queue", "sklearn")


def test_an_unknown_extra_is_refused_by_name(tmp_path: Path, repo: Path, wheel: Path) -> None:
    with pytest.raises(PackagingError, match="no extra gpu"):
        make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel, extras=["gpu"])


def test_dependencies_come_before_code_and_models(tmp_path: Path, repo: Path, wheel: Path) -> None:
    context = make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel)
    steps = instructions((context.directory / "Dockerfile").read_text())
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]
    text = [f"{keyword} {args}" for keyword, args in steps]

    def position(prefix: str) -> int:
        (index,) = [i for i, line in enumerate(text) if line.startswith(prefix)]
        return index

    requirements = position("COPY requirements.txt")
    install_dependencies = position(
        "RUN /opt/modelport/bin/pip install --no-cache-dir --requirement"
    )
    code = position("COPY wheels/")
    models = position("COPY models/ /models/")
    assert requirements < install_dependencies < code < models
    assert "--no-deps" in text[code + 1]  # the wheel adds no package of its own


def test_runs_as_a_user_with_health_check_ports_and_entry_point(
    tmp_path: Path, repo: Path, wheel: Path
) -> None:
    context = make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel)
    steps = dict(instructions((context.directory / "Dockerfile").read_text()))  # last wins
    user = steps["USER"].split(":")
    assert user == ["10001", "10001"]
    assert steps["EXPOSE"].split() == ["8080", "9000"]
    assert json.loads(steps["ENTRYPOINT"]) == ["modelport", "serve", "--host", "0.0.0.0"]
    options, _, command = steps["HEALTHCHECK"].partition(" CMD ")
    assert "--interval=" in options
    assert json.loads(command) == ["python", "-c", health_probe()]
    assert "/v2/health/ready" in health_probe()
    environment = dict(item.split("=", 1) for item in shlex.split(steps["ENV"]))
    assert environment["MODELPORT_HTTP_PORT"] == "8080"
    assert environment["MODELPORT_GRPC_PORT"] == "9000"
    assert environment["MODELPORT_MODEL_REPOSITORY"] == "/models"


def test_no_models_leaves_them_out(tmp_path: Path, repo: Path, wheel: Path) -> None:
    context = make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel, include_models=False)
    keywords = [f"{k} {a}" for k, a in instructions((context.directory / "Dockerfile").read_text())]
    assert not any(line.startswith("COPY models/") for line in keywords)
    assert not (context.directory / "models").exists()


def test_models_are_copied_as_the_server_sees_them(tmp_path: Path, repo: Path, wheel: Path) -> None:
    (repo / ".retired-1-20260101").mkdir()
    (repo / ".retired-1-20260101" / "model.onnx").write_bytes(b"old")
    (repo / "add_sub" / "1" / "model.onnx").chmod(0o600)
    context = make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel)
    models = context.directory / "models"
    assert sorted(p.name for p in models.iterdir()) == ["add_sub"]
    copied = models / "add_sub" / "1" / "model.onnx"
    assert copied.read_bytes() == (repo / "add_sub" / "1" / "model.onnx").read_bytes()
    assert copied.stat().st_mode & 0o777 == 0o644  # readable by the image's user
    ignore = (context.directory / ".dockerignore").read_text().splitlines()
    assert ignore[1:5] == ["*", "!requirements.txt", "!wheels/", "!models/"]
    assert (context.directory / "wheels" / wheel.name).is_file()


def test_refuses_what_it_cannot_package(tmp_path: Path, repo: Path, wheel: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ContextError, match="not empty"):
        make_context(repo, "demo:1", busy, wheel=wheel)
    (repo / "mystery" / "1").mkdir(parents=True)
    with pytest.raises(ContextError, match="mystery: no model file"):
        make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel)


@pytest.fixture
def checkov() -> Iterator[Path]:
    path = DEPLOY_CHECKS / "checkov"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash scripts/install_test_deps.sh` (make test does)")
    yield path


def checkov_report(checkov: Path, dockerfile: Path) -> dict[str, object]:
    done = subprocess.run(
        # --skip-download: no guideline downloads from the vendor; the checks are local
        [
            str(checkov),
            "-f",
            str(dockerfile),
            "--framework",
            "dockerfile",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = json.loads(done.stdout)
    assert isinstance(report, dict), done.stdout
    return report


@pytest.mark.parametrize("include_models", [True, False])
def test_checkov_passes_the_dockerfile(
    tmp_path: Path, repo: Path, wheel: Path, checkov: Path, include_models: bool
) -> None:
    context = make_context(
        repo, "demo:1", tmp_path / "ctx", wheel=wheel, include_models=include_models
    )
    report = checkov_report(checkov, context.directory / "Dockerfile")
    summary, results = report["summary"], report["results"]
    assert isinstance(summary, dict) and isinstance(results, dict)
    failed = [(c["check_id"], c["check_name"]) for c in results["failed_checks"]]
    assert (summary["failed"], summary["skipped"], summary["parsing_errors"]) == (0, 0, 0), failed
    passed = {check["check_id"] for check in results["passed_checks"]}
    # HEALTHCHECK, USER, last USER not root, no ADD, no latest tag, WORKDIR absolute
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_8", "CKV_DOCKER_7"} <= passed


def test_checkov_would_notice(tmp_path: Path, repo: Path, wheel: Path, checkov: Path) -> None:
    """The same run fails a Dockerfile without the health check or the user."""
    context = make_context(repo, "demo:1", tmp_path / "ctx", wheel=wheel)
    lines = (context.directory / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    stripped = [
        line
        for i, line in enumerate(lines)
        if i not in (start, start + 1) and not line.startswith("USER")
    ]
    broken = tmp_path / "Dockerfile.broken"
    broken.write_text("\n".join(stripped) + "\n")
    results = checkov_report(checkov, broken)["results"]
    assert isinstance(results, dict)
    failed = {check["check_id"] for check in results["failed_checks"]}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= failed


def test_build_says_plainly_when_no_builder_is_installed(
    tmp_path: Path, repo: Path, wheel: Path
) -> None:
    """`run_cli`'s PATH is /usr/bin:/bin, where neither docker nor podman is."""
    assert not any(
        (Path(d) / b).exists() for d in ("/usr/bin", "/bin") for b in ("docker", "podman")
    )
    out = tmp_path / "ctx"
    done = run_cli(
        "build", "--model-repository", str(repo), "-t", "demo:1", "-o", str(out), "--wheel",
        str(wheel), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "neither docker nor podman is installed, so no image was built" in done.stderr
    assert f"docker build --tag demo:1 {out}" in done.stderr
    assert (out / "Dockerfile").is_file()


def test_build_refuses_a_bad_tag(tmp_path: Path, repo: Path) -> None:
    done = run_cli("build", "--model-repository", str(repo), "-t", "Not A Tag", cwd=tmp_path)
    assert done.returncode == 2
    assert "not an image reference" in done.stderr
