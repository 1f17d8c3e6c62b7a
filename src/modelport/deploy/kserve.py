"""KServe manifests: a ClusterServingRuntime for modelport and an InferenceService using it.

Field names follow KServe's own runtimes (config/runtimes/ in kserve/kserve: MLServer's and
Triton's): the container is `kserve-container`, HTTP on 8080, gRPC on 9000 in a port named
`h2c`, Prometheus annotations under prometheus.kserve.io/. Knative routes one port per
revision, so in Knative mode the runtime declares the HTTP port only; Standard mode (KServe's
default: a Deployment, a Service and an HPA) gets both.
"""

from __future__ import annotations

from modelport.deploy import pod
from modelport.deploy.conventions import (
    GRPC_PORT,
    HTTP_PORT,
    IMAGE_MODELS,
    KSERVE_MODELS,
    METRICS_PATH,
)
from modelport.deploy.kubernetes import settings_config_map
from modelport.deploy.manifest_options import ManifestOptions
from modelport.deploy.pod import Manifest, PodPlan
from modelport.deploy.repository_needs import (
    KSERVE_FORMATS,
    REPOSITORY_FORMAT,
    TRITON_FORMAT,
    RepositoryNeeds,
)

API_VERSION_RUNTIME = "serving.kserve.io/v1alpha1"
API_VERSION_ISVC = "serving.kserve.io/v1beta1"
CONTAINER = "kserve-container"
COMPONENT = "predictor"

SUPPORTED_FORMATS = (*sorted(set(KSERVE_FORMATS.values())), TRITON_FORMAT, REPOSITORY_FORMAT)
"""Every format modelport serves. No versions: an InferenceService that names no version
matches any, and which framework versions an image has is the image's business."""

MODES = {"standard": "Standard", "knative": "Knative"}


def runtime_plan() -> PodPlan:
    return PodPlan(models_dir=KSERVE_MODELS, models_pvc=None, tls_secret=None, secret_mode=0o444)


def cluster_serving_runtime(options: ManifestOptions) -> Manifest:
    """Cluster-wide, so the API-key Secret it names must exist in each namespace that uses it.
    TLS is left to KServe's gateway or mesh, which speak plain HTTP to the predictor."""
    plan = runtime_plan()
    ports = [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if options.kserve_mode == "standard":
        ports.append({"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"})
    meta = pod.metadata(options, options.runtime, COMPONENT)
    meta.pop("namespace", None)  # cluster-scoped
    meta["annotations"] = {"serving.kserve.io/server-type": "modelport"}
    return {
        "apiVersion": API_VERSION_RUNTIME,
        "kind": "ClusterServingRuntime",
        "metadata": meta,
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(HTTP_PORT),
                "prometheus.kserve.io/path": METRICS_PATH,
            },
            "supportedModelFormats": [
                # chosen by naming the runtime; autoSelect would take models from other runtimes
                {"name": name, "autoSelect": False}
                for name in SUPPORTED_FORMATS
            ],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [pod.container(options, plan, CONTAINER, ports)],
            "volumes": pod.volumes(options, plan),
        },
    }


def inference_service(options: ManifestOptions, needs: RepositoryNeeds) -> Manifest:
    model: Manifest = {
        "modelFormat": {"name": needs.inference_service_format()},
        "runtime": options.runtime,
        "protocolVersion": "v2",
    }
    if options.storage_uri is not None:
        model["storageUri"] = options.storage_uri
    else:
        # no storage initializer: serve the repository `modelport build` baked into the image
        model["env"] = [{"name": "MODELPORT_MODEL_REPOSITORY", "value": IMAGE_MODELS}]
    predictor: Manifest = {
        "minReplicas": options.min_replicas,
        "maxReplicas": options.max_replicas,
        "scaleMetric": options.scale_metric,
        "scaleTarget": options.target,
    }
    if options.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = options.canary_traffic_percent
    predictor["model"] = model
    meta = pod.metadata(options, options.name, COMPONENT)
    meta["annotations"] = {
        "serving.kserve.io/deploymentMode": MODES[options.kserve_mode],
        # KServe adds prometheus.io/* from the runtime's prometheus.kserve.io/* annotations
        "serving.kserve.io/enable-prometheus-scraping": "true",
    }
    return {
        "apiVersion": API_VERSION_ISVC,
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


def manifests(options: ManifestOptions, needs: RepositoryNeeds) -> dict[str, Manifest]:
    """File name -> manifest, in the order `kubectl apply` should meet them."""
    return {
        "configmap.yaml": settings_config_map(options),
        "clusterservingruntime.yaml": cluster_serving_runtime(options),
        "inferenceservice.yaml": inference_service(options, needs),
    }
