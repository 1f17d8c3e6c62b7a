"""`modelport k8s`: the manifests are valid for Kubernetes (kubernetes-validate, strict, against
the schemas of two releases) and for KServe (its own API models, in the deploy-checks
virtualenv), and they say what the issue asks: ports, probes, keys, security, autoscaling."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from modelport.cli.main import cli
from modelport.deploy import kserve, kubernetes
from modelport.deploy.manifest_options import ManifestOptions, OptionError
from modelport.deploy.manifests import manifest_sets, stream
from modelport.deploy.repository_needs import scan_repository
from modelport.examples import onnx_models
from modelport.security.keys import KeyEntry, generate_key, key_digest, write_key_file
from modelport.settings import ServerSettings
from tests.support import add_model

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest release still common in managed clusters that has everything used here, and the
newest kubernetes-validate knows."""

DEPLOY_CHECKS = Path(sys.prefix) / "deploy-checks" / "bin"

Manifest = dict[str, Any]


def deploy_checks_python() -> Path:
    python = DEPLOY_CHECKS / "python"
    if not python.exists():
        pytest.fail(
            f"{python} is missing: run `bash scripts/install_test_deps.sh` (make test does)"
        )
    return python


def write_model_file(repo: Path, name: str, file_name: str, version: int = 1) -> None:
    """A version directory holding a file of that name: the platform comes from the name alone,
    and nothing here loads it."""
    directory = repo / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file_name).write_bytes(b"not loaded by these tests")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_model(root, "add_sub", onnx_models.add_sub("FP32", 4))
    return root


def options(**given: Any) -> ManifestOptions:
    return ManifestOptions(**{"name": "fraud", "image": "registry.example.com/ml/fraud:1", **given})


def container_of(manifest: Manifest) -> Manifest:
    if manifest["kind"] == "Deployment":
        spec = manifest["spec"]["template"]["spec"]
    else:
        spec = manifest["spec"]
    (only,) = spec["containers"]
    return dict(only)


def env_of(container: Manifest) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


# --- what a repository needs -------------------------------------------------------------------


def test_needs_come_from_file_names_and_configs(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "onnx_model", onnx_models.add_sub("FP32", 4))
    write_model_file(root, "torch_model", "model.pt2")
    write_model_file(root, "forest", "model.joblib")
    write_model_file(root, "booster", "weights.bin")
    (root / "booster" / "config.yaml").write_text("platform: xgboost\n")
    write_model_file(root, "custom", "model.onnx")
    (root / "custom" / "config.yaml").write_text("default_model_filename: net.txt\n")
    write_model_file(root, "custom", "net.txt")
    write_model_file(root, ".retired-2-20260101", "model.keras")  # hidden: not a model
    needs = scan_repository(root)
    assert needs.problems == ()
    assert needs.extras == ("lightgbm", "sklearn", "torch", "xgboost")
    assert needs.kserve_formats == ("lightgbm", "onnx", "pytorch", "sklearn", "xgboost")
    assert needs.inference_service_format() == "modelport"  # several formats: the repository's


def test_one_format_names_the_inference_service_format(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model_file(root, "a", "model.pt")
    write_model_file(root, "b", "model.pt2", version=3)
    needs = scan_repository(root)
    assert needs.extras == ("torch",)
    assert needs.inference_service_format() == "pytorch"


def test_onnx_and_python_models_need_no_extra(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "net", onnx_models.add_sub("FP32", 4))
    write_model_file(root, "code", "model.py")
    needs = scan_repository(root)
    assert needs.extras == ()
    assert needs.inference_service_format() == "modelport"  # Python models have no KServe format


def test_a_model_whose_platform_cannot_be_told_is_named(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "net", onnx_models.add_sub("FP32", 4))
    write_model_file(root, "mixed", "model.onnx")
    write_model_file(root, "mixed", "model.pt")
    write_model_file(root, "nothing", "README.md")
    problems = scan_repository(root).problems
    assert len(problems) == 2
    assert problems[0].startswith("mixed: ") and "different platforms" in problems[0]
    assert problems[1].startswith("nothing: ") and "no model file" in problems[1]


# --- plain Kubernetes ----------------------------------------------------------------------------

VARIANTS = {
    "defaults": {},
    "tls, pvc, namespace": {
        "tls_secret": "fraud-tls",
        "models_pvc": "fraud-models",
        "namespace": "ml",
        "api_key_secret": "shared-keys",
    },
    "behind a gateway": {"allow_unauthenticated": True, "scale_metric": "memory"},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_pass_the_schemas(repo: Path, variant: str, version: str) -> None:
    sets = manifest_sets(options(**VARIANTS[variant]), scan_repository(repo), "kubernetes")
    kinds = []
    for manifest in sets["kubernetes"].values():
        kubernetes_validate.validate(manifest, version, strict=True)
        kinds.append(manifest["kind"])
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]


def test_the_schema_check_catches_a_misspelt_field(repo: Path) -> None:
    deployment = kubernetes.deployment(options())
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_deployment_is_locked_down_and_probed() -> None:
    deployment = kubernetes.deployment(options())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = container_of(deployment)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert {p["containerPort"] for p in container["ports"]} == {8080, 9000}
    # the read-only root file system needs a writable /tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_autoscaler_and_budget_point_at_the_deployment() -> None:
    given = options(min_replicas=2, max_replicas=6, scale_target=60)
    selector = kubernetes.deployment(given)["spec"]["selector"]["matchLabels"]
    service = kubernetes.service(given)
    assert service["spec"]["selector"] == selector
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8080
    assert ports["grpc"]["port"] == 9000 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    hpa = kubernetes.autoscaler(given)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    budget = kubernetes.disruption_budget(given)["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_keys_come_from_the_secret_and_tls_from_its_own(tmp_path: Path) -> None:
    deployment = kubernetes.deployment(options(tls_secret="fraud-tls"))
    container = container_of(deployment)
    env = env_of(container)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    keys = volumes["api-keys"]["secret"]
    assert keys["secretName"] == "fraud-api-keys"
    (item,) = keys["items"]
    assert env["MODELPORT_API_KEYS"] == f"{mounts['api-keys']}/{item['path']}"
    assert "MODELPORT_ALLOW_UNAUTHENTICATED" not in env
    assert volumes["tls"]["secret"]["secretName"] == "fraud-tls"
    assert env["MODELPORT_TLS_CERT"] == f"{mounts['tls']}/tls.crt"
    assert env["MODELPORT_TLS_KEY"] == f"{mounts['tls']}/tls.key"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_the_pods_environment_is_settings_the_server_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables as the pod gets them, read by the server's own ServerSettings: with the
    key file mounted where the manifest says, keys are on for the wildcard address."""
    key_file = tmp_path / "keys.yaml"
    key = generate_key()
    write_key_file(key_file, [KeyEntry(name="ci", sha256=key_digest(key), scopes=("inference",))])
    env = env_of(container_of(kubernetes.deployment(options())))
    env["MODELPORT_API_KEYS"] = str(key_file)
    env["MODELPORT_MODEL_REPOSITORY"] = str(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServerSettings()
    assert (settings.host, settings.http_port, settings.grpc_port) == ("0.0.0.0", 8080, 9000)
    assert settings.keys_configured and not settings.allow_unauthenticated

    open_env = env_of(container_of(kubernetes.deployment(options(allow_unauthenticated=True))))
    assert "MODELPORT_API_KEYS" not in open_env
    monkeypatch.delenv("MODELPORT_API_KEYS")
    monkeypatch.setenv(
        "MODELPORT_ALLOW_UNAUTHENTICATED", open_env["MODELPORT_ALLOW_UNAUTHENTICATED"]
    )
    settings = ServerSettings()
    assert settings.allow_unauthenticated and not settings.keys_configured


def test_no_keys_is_only_on_request() -> None:
    deployment = kubernetes.deployment(options(allow_unauthenticated=True))
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "api-keys" not in volumes
    assert env_of(container_of(deployment))["MODELPORT_ALLOW_UNAUTHENTICATED"] == "true"


# --- KServe --------------------------------------------------------------------------------------


def test_serving_runtime_follows_kserve_conventions(repo: Path) -> None:
    runtime = kserve.cluster_serving_runtime(options())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ClusterServingRuntime"
    assert "namespace" not in runtime["metadata"]
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    assert {"onnx", "pytorch", "sklearn", "xgboost", "lightgbm", "tensorflow"} <= formats
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }
    container = container_of(runtime)
    assert container["name"] == "kserve-container"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http1", 8080),
        ("h2c", 9000),
    ]
    env = env_of(container)
    assert env["MODELPORT_MODEL_REPOSITORY"] == "/mnt/models"
    assert env["MODELPORT_HTTP_PORT"] == "8080" and env["MODELPORT_GRPC_PORT"] == "9000"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_knative_runtime_declares_one_port() -> None:
    """Knative refuses a container with more than one port."""
    runtime = kserve.cluster_serving_runtime(options(kserve_mode="knative"))
    assert [p["containerPort"] for p in container_of(runtime)["ports"]] == [8080]


def test_inference_service_autoscales_and_takes_canary_traffic(repo: Path) -> None:
    given = options(
        kserve_mode="knative",
        canary_traffic_percent=10,
        scale_metric="concurrency",
        min_replicas=1,
        max_replicas=5,
        storage_uri="s3://models/fraud",
    )
    service = kserve.inference_service(given, scan_repository(repo))
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = service["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 5)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 32)
    model = predictor["model"]
    assert model["runtime"] == "fraud-runtime"
    assert model["modelFormat"] == {"name": "onnx"}
    assert model["storageUri"] == "s3://models/fraud"
    assert "env" not in model


def test_inference_service_without_storage_serves_the_baked_repository(repo: Path) -> None:
    model = kserve.inference_service(options(), scan_repository(repo))["spec"]["predictor"]["model"]
    assert "storageUri" not in model
    assert model["env"] == [{"name": "MODELPORT_MODEL_REPOSITORY", "value": "/models"}]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"canary_traffic_percent": 10}, "needs --kserve-mode knative"),
        ({"scale_metric": "concurrency"}, "measured by Knative only"),
        ({"name": "Fraud_Model"}, "not a Kubernetes name"),
        ({"image": "Registry/UPPER CASE"}, "not an image reference"),
        ({"allow_unauthenticated": True, "api_key_secret": "k"}, "exclude each other"),
        ({"min_replicas": 4, "max_replicas": 2}, "--min-replicas"),
        ({"memory": "lots"}, "not a resource quantity"),
    ],
)
def test_options_that_cannot_work_are_refused(given: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        options(**given)


def check_with_kserve_models(documents: list[Manifest]) -> list[str]:
    """Runs in the deploy-checks virtualenv (its source is sent there): builds each document
    with KServe's own API models (kserve.models), and the kubernetes client's for the core types
    they embed. Every field must be one the model declares, of its declared type, and the
    models' required fields must be there."""
    import re

    import kserve.models
    import kubernetes.client.models

    problems: list[str] = []
    primitives: dict[str, Any] = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    primitives["object"] = object

    def model_class(name: str) -> Any:
        for module in (kserve.models, kubernetes.client.models):
            found = getattr(module, name, None)
            if found is not None:
                return found
        raise LookupError(f"no API model {name}")

    def build(data: Any, type_name: str, path: str) -> Any:
        # kserve writes list[T] and dict(str, T); the kubernetes client List[T], Dict[str, T]
        listed = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
        mapped = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
        if listed or mapped:
            kind = list if listed else dict
            if not isinstance(data, kind):
                problems.append(f"{path}: expected a {kind.__name__}")
                return None
            inner = next(g for g in (listed or mapped).groups() if g)  # type: ignore[union-attr]
            if listed:
                return [build(v, inner, f"{path}[{i}]") for i, v in enumerate(data)]
            return {k: build(v, inner, f"{path}.{k}") for k, v in data.items()}
        if type_name in primitives:
            bool_for_int = type_name == "int" and isinstance(data, bool)
            if bool_for_int or not isinstance(data, primitives[type_name]):
                problems.append(f"{path}: expected {type_name}, got {data!r}")
            return data
        cls = model_class(type_name)
        if not isinstance(data, dict):
            problems.append(f"{path}: expected an object ({type_name})")
            return None
        fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        values = {}
        for key, value in data.items():
            attr = fields.get(key)
            if attr is None:
                problems.append(f"{path}.{key}: not a field of {type_name}")
                continue
            values[attr] = build(value, cls.openapi_types[attr], f"{path}.{key}")
        try:
            return cls(**values)
        except ValueError as exc:  # a required field missing (pydantic's errors are ValueErrors)
            problems.append(f"{path}: {exc}")
            return None

    for document in documents:
        version = document["apiVersion"].rsplit("/", 1)[-1]  # v1alpha1 -> V1alpha1<Kind>
        build(document, version[0].upper() + version[1:] + document["kind"], document["kind"])
    return problems


def kserve_problems(documents: list[Manifest]) -> list[str]:
    source = inspect.getsource(check_with_kserve_models)
    program = (
        "from __future__ import annotations\nimport json, sys\nfrom typing import Any\n"
        f"Manifest = dict[str, Any]\n{source}\n"
        "print(json.dumps(check_with_kserve_models(json.load(sys.stdin))))\n"
    )
    done = subprocess.run(
        [str(deploy_checks_python()), "-c", program],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def kserve_documents(given: ManifestOptions, repo: Path) -> list[Manifest]:
    files = manifest_sets(given, scan_repository(repo), "kserve")["kserve"]
    return [m for m in files.values() if m["apiVersion"].startswith("serving.kserve.io/")]


def test_kserve_manifests_pass_kserves_api_models(repo: Path) -> None:
    standard = kserve_documents(options(), repo)
    knative = kserve_documents(
        options(
            kserve_mode="knative",
            canary_traffic_percent=20,
            scale_metric="rps",
            storage_uri="pvc://models/fraud",
            allow_unauthenticated=True,
        ),
        repo,
    )
    assert [d["kind"] for d in standard] == ["ClusterServingRuntime", "InferenceService"]
    assert kserve_problems(standard + knative) == []

    # and the check is a check: a misspelt field, a wrong type, a missing required field
    broken = json.loads(json.dumps(standard))
    broken[0]["spec"]["supportedModelFormats"][0]["autoSelect"] = "no"
    del broken[0]["spec"]["containers"][0]["name"]
    broken[1]["spec"]["predictor"]["canaryTraficPercent"] = 10
    problems = kserve_problems(broken)
    assert len(problems) == 3, problems
    assert "autoSelect: expected bool" in problems[0]
    assert "containers[0]" in problems[1] and "name" in problems[1]
    assert "canaryTraficPercent: not a field of V1beta1PredictorSpec" in problems[2]


@pytest.mark.parametrize("mode", ["standard", "knative"])
def test_runtime_container_passes_the_pod_schema(mode: str) -> None:
    """The runtime embeds a core container and volumes: the same strict schemas as a Pod's."""
    runtime = kserve.cluster_serving_runtime(options(kserve_mode=mode))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime-check"},
        "spec": {
            "containers": runtime["spec"]["containers"],
            "volumes": runtime["spec"]["volumes"],
        },
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


# --- the command ---------------------------------------------------------------------------------


def test_k8s_writes_one_folder_per_set(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(
        cli,
        [
            "k8s",
            "--model-repository",
            str(repo),
            "--name",
            "fraud",
            "--image",
            "fraud:1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
    assert written == [
        "kserve/clusterservingruntime.yaml",
        "kserve/configmap.yaml",
        "kserve/inferenceservice.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/hpa.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/service.yaml",
    ]
    deployment = yaml.safe_load((out / "kubernetes" / "deployment.yaml").read_text())
    assert deployment == kubernetes.deployment(options(image="fraud:1"))
    assert "kubectl create secret generic fraud-api-keys" in result.output


def test_k8s_prints_one_stream_without_output_folder(repo: Path) -> None:
    result = CliRunner().invoke(
        cli, ["k8s", "--model-repository", str(repo), "--name", "fraud", "--image", "fraud:1"]
    )
    assert result.exit_code == 0, result.output
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = [d["kind"] for d in documents]
    assert kinds == [
        "ConfigMap",  # shared by both sets: once
        "ClusterServingRuntime",
        "InferenceService",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert result.stdout == stream(
        manifest_sets(options(image="fraud:1"), scan_repository(repo)),
        result.stdout.split("---", 1)[0],
    )


def test_k8s_refuses_bad_input_by_name(repo: Path, tmp_path: Path) -> None:
    base = ["k8s", "--model-repository", str(repo), "--image", "fraud:1"]
    result = CliRunner().invoke(cli, [*base, "--name", "fraud", "--canary-traffic-percent", "5"])
    assert result.exit_code == 2
    assert "--canary-traffic-percent needs --kserve-mode knative" in result.output
    broken = tmp_path / "broken"
    write_model_file(broken, "mystery", "weights.bin")
    result = CliRunner().invoke(
        cli,
        ["k8s", "--model-repository", str(broken), "--image", "fraud:1", "--name", "fraud"],
    )
    assert result.exit_code == 2
    assert "mystery: no model file of a known platform" in result.output
