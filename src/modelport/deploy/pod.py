"""The modelport container as a Kubernetes pod runs it: settings as MODELPORT_* variables, the
probes, the locked-down security context, resources, and the volumes for keys, TLS and /tmp.
Shared by the plain Deployment and KServe's ClusterServingRuntime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelport.__about__ import __version__
from modelport.deploy.conventions import (
    GRPC_PORT,
    HTTP_PORT,
    KEYS_DIR,
    KEYS_FILE_NAME,
    LIVE_PATH,
    READY_PATH,
    TLS_DIR,
    USER_ID,
)
from modelport.deploy.manifest_options import ManifestOptions

Manifest = dict[str, Any]

TMP_VOLUME = "tmp"
KEYS_VOLUME = "api-keys"
TLS_VOLUME = "tls"
MODELS_VOLUME = "models"


@dataclass(frozen=True)
class PodPlan:
    """How one pod gets its models, keys and certificates."""

    models_dir: str
    models_pvc: str | None
    """A PersistentVolumeClaim mounted read-only at models_dir, or None (baked in, or KServe's
    storage initializer)."""
    tls_secret: str | None
    secret_mode: int
    """Secret files' mode: 0o440 where the pod's fsGroup makes them the user's group's, 0o444
    where KServe's runtime spec has no pod securityContext to set one."""

    @property
    def tls(self) -> bool:
        return self.tls_secret is not None


def labels(options: ManifestOptions, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelport",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": __version__,
    }


def metadata(options: ManifestOptions, name: str, component: str) -> Manifest:
    meta: Manifest = {"name": name}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    meta["labels"] = labels(options, component)
    return meta


def environment(options: ManifestOptions, plan: PodPlan) -> list[Manifest]:
    """Explicit settings; everything else comes from the settings ConfigMap (envFrom)."""
    values = {
        "MODELPORT_HOST": "0.0.0.0",
        "MODELPORT_HTTP_PORT": str(HTTP_PORT),
        "MODELPORT_GRPC_PORT": str(GRPC_PORT),
        "MODELPORT_MODEL_REPOSITORY": plan.models_dir,
    }
    if options.keys_secret is not None:
        values["MODELPORT_API_KEYS"] = f"{KEYS_DIR}/{KEYS_FILE_NAME}"
    else:
        values["MODELPORT_ALLOW_UNAUTHENTICATED"] = "true"
    if plan.tls:
        values["MODELPORT_TLS_CERT"] = f"{TLS_DIR}/tls.crt"
        values["MODELPORT_TLS_KEY"] = f"{TLS_DIR}/tls.key"
    return [{"name": name, "value": value} for name, value in values.items()]


def settings_from(options: ManifestOptions) -> list[Manifest]:
    """The ConfigMap of further MODELPORT_* settings; optional, so a pod starts without it."""
    return [{"configMapRef": {"name": options.settings_config_map, "optional": True}}]


def probes(port: int | str, tls: bool) -> Manifest:
    """Health stays open without a key (unless --protect-health), so probes need none."""
    scheme = "HTTPS" if tls else "HTTP"

    def http_get(path: str) -> Manifest:
        return {"path": path, "port": port, "scheme": scheme}

    return {
        # live answers as soon as the socket is open; models load after it
        "livenessProbe": {
            "httpGet": http_get(LIVE_PATH),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # ready turns 200 when the initial load is done
        "readinessProbe": {
            "httpGet": http_get(READY_PATH),
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def container_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        # modelport writes only to /tmp (an emptyDir): --workers' metrics files, worker sockets
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(options: ManifestOptions) -> Manifest:
    quantities = {"cpu": options.cpu, "memory": options.memory}
    return {"requests": dict(quantities), "limits": dict(quantities)}


def volumes(options: ManifestOptions, plan: PodPlan) -> list[Manifest]:
    found: list[Manifest] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    if options.keys_secret is not None:
        found.append(
            {
                "name": KEYS_VOLUME,
                # no subPath: a Secret volume updates in place, and the server reads the key
                # file again when it changes, so a revoked key stops working without a restart
                "secret": {
                    "secretName": options.keys_secret,
                    "defaultMode": plan.secret_mode,
                    "items": [{"key": KEYS_FILE_NAME, "path": KEYS_FILE_NAME}],
                },
            }
        )
    if plan.tls_secret is not None:
        found.append(
            {
                "name": TLS_VOLUME,
                "secret": {"secretName": plan.tls_secret, "defaultMode": plan.secret_mode},
            }
        )
    if plan.models_pvc is not None:
        found.append(
            {
                "name": MODELS_VOLUME,
                "persistentVolumeClaim": {"claimName": plan.models_pvc, "readOnly": True},
            }
        )
    return found


def volume_mounts(options: ManifestOptions, plan: PodPlan) -> list[Manifest]:
    mounts: list[Manifest] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if options.keys_secret is not None:
        mounts.append({"name": KEYS_VOLUME, "mountPath": KEYS_DIR, "readOnly": True})
    if plan.tls:
        mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
    if plan.models_pvc is not None:
        mounts.append({"name": MODELS_VOLUME, "mountPath": plan.models_dir, "readOnly": True})
    return mounts


def container(
    options: ManifestOptions, plan: PodPlan, name: str, ports: list[Manifest]
) -> Manifest:
    spec: Manifest = {
        "name": name,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        # the image's entry point is the same; naming it makes any modelport image work
        "command": ["modelport", "serve"],
        "env": environment(options, plan),
        "envFrom": settings_from(options),
    }
    if ports:
        spec["ports"] = ports
    spec.update(probes(HTTP_PORT, plan.tls))
    spec["securityContext"] = container_security()
    spec["resources"] = resources(options)
    spec["volumeMounts"] = volume_mounts(options, plan)
    return spec
