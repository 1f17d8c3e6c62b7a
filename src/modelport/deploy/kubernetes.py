"""Plain Kubernetes manifests, for clusters without KServe: a Deployment, its Service, a
HorizontalPodAutoscaler, a PodDisruptionBudget, and the ConfigMap of further settings. The
API-key and TLS Secrets are referenced, never written: their contents are the operator's."""

from __future__ import annotations

from modelport.deploy import pod
from modelport.deploy.conventions import GRPC_PORT, HTTP_PORT, IMAGE_MODELS, METRICS_PATH, USER_ID
from modelport.deploy.manifest_options import ManifestOptions
from modelport.deploy.pod import Manifest, PodPlan

COMPONENT = "server"
GRACE_SECONDS = 40
"""SIGTERM drains queues for up to 30 s and --workers' supervisor waits 20 s for its workers."""

MODELS_PVC_DIR = "/mnt/models"


def plan_for(options: ManifestOptions) -> PodPlan:
    return PodPlan(
        models_dir=MODELS_PVC_DIR if options.models_pvc else IMAGE_MODELS,
        models_pvc=options.models_pvc,
        tls_secret=options.tls_secret,
        secret_mode=0o440,
    )


def settings_config_map(options: ManifestOptions) -> Manifest:
    """Further MODELPORT_* settings (any `modelport serve` option), without editing the pods'
    spec. Changing it takes a `kubectl rollout restart`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": pod.metadata(options, options.settings_config_map, COMPONENT),
        "data": {"MODELPORT_LOG_LEVEL": "info"},
    }


def deployment(options: ManifestOptions) -> Manifest:
    plan = plan_for(options)
    selector = _selector(options)
    ports = [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    template_meta: Manifest = {
        "labels": pod.labels(options, COMPONENT),
        "annotations": {
            # /metrics needs a key with the `metrics` scope when keys are on: give Prometheus
            # one (authorization.credentials_file in its scrape config)
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(HTTP_PORT),
            "prometheus.io/path": METRICS_PATH,
            "prometheus.io/scheme": "https" if plan.tls else "http",
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": pod.metadata(options, options.name, COMPONENT),
        "spec": {
            "replicas": options.min_replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": template_meta,
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": USER_ID,
                        "runAsGroup": USER_ID,
                        "fsGroup": USER_ID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [pod.container(options, plan, "modelport", ports)],
                    "volumes": pod.volumes(options, plan),
                },
            },
        },
    }


def service(options: ManifestOptions) -> Manifest:
    grpc: Manifest = {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}
    if options.tls_secret is None:
        # HTTP/2 in the clear: tells gateways and meshes not to speak HTTP/1.1 to it
        grpc["appProtocol"] = "kubernetes.io/h2c"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": pod.metadata(options, options.name, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(options),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                grpc,
            ],
        },
    }


def autoscaler(options: ManifestOptions) -> Manifest:
    """Resource metrics only: concurrency and rps need Knative (the KServe manifests)."""
    metric = options.scale_metric if options.scale_metric in ("cpu", "memory") else "cpu"
    target = options.target if metric == options.scale_metric else 70
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": pod.metadata(options, options.name, COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": metric,
                        "target": {"type": "Utilization", "averageUtilization": target},
                    },
                }
            ],
        },
    }


def disruption_budget(options: ManifestOptions) -> Manifest:
    """One pod at a time may be evicted (a node drain): with one replica that still lets the
    drain go on, which minAvailable: 1 would block forever."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": pod.metadata(options, options.name, COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(options)}},
    }


def manifests(options: ManifestOptions) -> dict[str, Manifest]:
    """File name -> manifest, in the order `kubectl apply` should meet them."""
    return {
        "configmap.yaml": settings_config_map(options),
        "deployment.yaml": deployment(options),
        "service.yaml": service(options),
        "hpa.yaml": autoscaler(options),
        "pdb.yaml": disruption_budget(options),
    }


def _selector(options: ManifestOptions) -> dict[str, str]:
    labels = pod.labels(options, COMPONENT)
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
