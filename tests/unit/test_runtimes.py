"""Runtime selection, lazy optional imports, and pipeline plans, without starting a server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, MissingDependency
from modelport.core.pipeline import Pipeline
from modelport.core.runtime import Capabilities
from modelport.repository.config_file import parse_config
from modelport.runtimes.registry import MODEL_FILES, RuntimeRegistry


class FakeRuntime:
    capabilities = Capabilities(thread_safe=True, releases_gil=True)
    triton_platform = "fake"

    def __init__(self, platform: str) -> None:
        self.platform = platform

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return None

    def load(self, version_dir: Path, config: ModelConfig) -> object:
        raise AssertionError("not loaded in these tests")


def fake_registry() -> RuntimeRegistry:
    platforms = set(MODEL_FILES.values())
    return RuntimeRegistry({p: (lambda p=p: FakeRuntime(p)) for p in platforms})  # type: ignore[misc]


@pytest.mark.parametrize(("filename", "platform"), sorted(MODEL_FILES.items()))
def test_platform_follows_the_file_name(tmp_path: Path, filename: str, platform: str) -> None:
    path = tmp_path / filename
    path.mkdir() if filename.endswith(".savedmodel") else path.write_bytes(b"x")
    assert fake_registry().runtime_for(tmp_path, ModelConfig()).platform == platform


def test_files_of_two_platforms_need_an_explicit_platform(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"different platforms \(onnx, torch\)"):
        fake_registry().runtime_for(tmp_path, ModelConfig())
    chosen = fake_registry().runtime_for(tmp_path, ModelConfig(platform="torch"))
    assert chosen.platform == "torch"


def test_a_custom_file_name_goes_by_its_suffix(tmp_path: Path) -> None:
    (tmp_path / "resnet.pt2").write_bytes(b"x")
    config = ModelConfig(default_model_filename="resnet.pt2")
    assert fake_registry().runtime_for(tmp_path, config).platform == "torch"
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"cannot tell the platform of weights\.bin"):
        fake_registry().runtime_for(tmp_path, ModelConfig(default_model_filename="weights.bin"))


def test_no_model_file_lists_the_names_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.onnx, model\.pt, model\.pt2"):
        fake_registry().runtime_for(tmp_path, ModelConfig())


def test_a_missing_framework_names_the_extra_to_install() -> None:
    def missing() -> FakeRuntime:
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    registry = RuntimeRegistry({"tensorflow": missing})
    with pytest.raises(MissingDependency, match=r"pip install 'modelport\[tensorflow\]'"):
        registry.get("tensorflow")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_serving_onnx_imports_no_other_framework_nor_grpcio(tmp_path: Path) -> None:
    from modelport.examples import onnx_models

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    onnx_models.save(onnx_models.add_sub("FP32", 4), str(version / "model.onnx"))
    result = run_python(f"""
        import sys
        from pathlib import Path
        from modelport.app import create_app
        from modelport.core.config import ModelConfig
        from modelport.runtimes.registry import RuntimeRegistry
        registry = RuntimeRegistry()
        runtime = registry.runtime_for(Path({str(version)!r}), ModelConfig())
        host = registry.host(runtime, Path({str(version)!r}), ModelConfig(), "m-1")
        host.close()
        heavy = [m for m in ("torch", "tensorflow", "sklearn", "xgboost", "lightgbm", "grpc")
                 if m in sys.modules]
        print(runtime.platform, heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnx []"


def test_a_real_missing_import_is_reported_with_the_extra() -> None:
    result = run_python("""
        import sys
        sys.modules["tensorflow"] = None  # as if tensorflow-cpu were not installed
        from modelport.core.errors import MissingDependency
        from modelport.runtimes.registry import RuntimeRegistry
        try:
            RuntimeRegistry().get("tensorflow")
        except MissingDependency as exc:
            print(exc.message)
    """)
    assert result.returncode == 0, result.stderr
    assert "needs tensorflow" in result.stdout
    assert "pip install 'modelport[tensorflow]'" in result.stdout


# ---- pipeline configs -----------------------------------------------------------------------

PIPELINE = """
inputs: [{name: TEXT, datatype: BYTES, shape: [-1]}]
outputs: [{name: LABEL, datatype: BYTES, shape: [-1]}, {name: IDS, datatype: INT64, shape: [-1, 4]}]
pipeline:
  - {model: tokenize, inputs: {text: TEXT}, outputs: {ids: IDS}}
  - {model: classify, version: 2, inputs: {ids: IDS}, outputs: {logits: LOGITS}}
  - {model: label, inputs: {logits: LOGITS}, outputs: {label: LABEL}}
"""


def test_pipeline_plan_runs_only_the_steps_an_output_needs() -> None:
    config = parse_config(PIPELINE, "p")
    assert config.pipeline[1].version == "2"
    pipeline = Pipeline("p", config)
    assert [number for number, _ in pipeline.plan(None)] == [1, 2, 3]
    assert [number for number, _ in pipeline.plan(("IDS",))] == [1]
    assert [number for number, _ in pipeline.plan(("LABEL",))] == [1, 2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("inputs: {logits: LOGITS}", "inputs: {logits: NOPE}"), r"reads \['NOPE'\]"),
        (("outputs: {label: LABEL}", "outputs: {label: IDS}"), "writes 'IDS', which already"),
        (("outputs: {label: LABEL}", "outputs: {label: OTHER}"), r"\['LABEL'\] are not written"),
        (("model: label,", "model: p,"), "calls the pipeline itself"),
        (("inputs: [{name: TEXT, datatype: BYTES, shape: [-1]}]", ""), "lists its inputs"),
        (("pipeline:", "platform: onnx\npipeline:"), "platform is 'pipeline'"),
    ],
)
def test_broken_pipelines_are_refused_with_the_reason(
    change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(PIPELINE.replace(*change), "p")


def test_an_unquoted_digest_is_explained() -> None:
    with pytest.raises(ValueError, match="quoted string"):
        parse_config("sha256: 1234\n", "m")
