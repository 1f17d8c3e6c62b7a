"""What `modelport k8s` is asked for, checked once so the manifest builders need not check."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from modelport.deploy.conventions import image_problem, resource_name_problem

KServeMode = Literal["standard", "knative"]
ScaleMetric = Literal["cpu", "memory", "concurrency", "rps"]
Target = Literal["all", "kserve", "kubernetes"]
TARGETS: tuple[Target, ...] = ("all", "kserve", "kubernetes")

KNATIVE_METRICS = frozenset({"concurrency", "rps"})
"""Measured by Knative's autoscaler only; KServe's Standard mode scales on cpu or memory."""

DEFAULT_SCALE_TARGET: dict[str, int] = {"cpu": 70, "memory": 80, "concurrency": 32, "rps": 500}
"""cpu and memory: percent of the request; concurrency: requests in flight per pod (modelport
keeps its throughput at 32, benchmarks/); rps: requests per second per pod."""

# A resource quantity as Kubernetes writes one: 500m, 1, 1.5, 2Gi, 512M.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


class OptionError(ValueError):
    """The options cannot make a working set of manifests; the message says which and why."""


@dataclass(frozen=True)
class ManifestOptions:
    name: str
    image: str
    namespace: str | None = None
    api_key_secret: str | None = None
    """The Secret holding the key file under keys.yaml; default NAME-api-keys."""
    allow_unauthenticated: bool = False
    """No keys: for pods that only an authenticating gateway or mesh can reach."""
    tls_secret: str | None = None
    """A kubernetes.io/tls Secret (tls.crt, tls.key) for the plain Deployment's two ports."""
    cpu: str = "1"
    memory: str = "2Gi"
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: ScaleMetric = "cpu"
    scale_target: int | None = None
    kserve_mode: KServeMode = "standard"
    canary_traffic_percent: int | None = None
    storage_uri: str | None = None
    """Where KServe's storage initializer fetches the repository from; without one, the
    InferenceService serves the repository baked into the image."""
    models_pvc: str | None = None
    """A PersistentVolumeClaim holding the repository, for the plain Deployment."""
    runtime_name: str | None = None

    def __post_init__(self) -> None:
        problems = [p for p in self._problems() if p is not None]
        if problems:
            raise OptionError("; ".join(problems))

    def _problems(self) -> list[str | None]:
        problems: list[str | None] = [
            resource_name_problem(self.name, "--name"),
            image_problem(self.image),
        ]
        for value, what in (
            (self.namespace, "--namespace"),
            (self.api_key_secret, "--api-key-secret"),
            (self.tls_secret, "--tls-secret"),
            (self.models_pvc, "--models-pvc"),
            (self.runtime_name, "--runtime-name"),
        ):
            if value is not None:
                problems.append(resource_name_problem(value, what))
        for value, what in ((self.cpu, "--cpu"), (self.memory, "--memory")):
            if not _QUANTITY.fullmatch(value) or float(re.sub(r"[^0-9.]", "", value)) <= 0:
                problems.append(f"{what} '{value}' is not a resource quantity (e.g. 500m, 2Gi)")
        if self.allow_unauthenticated and self.api_key_secret is not None:
            problems.append("--allow-unauthenticated and --api-key-secret exclude each other")
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append("replicas: need 1 <= --min-replicas <= --max-replicas")
        if self.scale_metric in KNATIVE_METRICS and self.kserve_mode != "knative":
            problems.append(
                f"--scale-metric {self.scale_metric} is measured by Knative only: add "
                "--kserve-mode knative, or scale on cpu or memory"
            )
        if self.canary_traffic_percent is not None:
            if self.kserve_mode != "knative":
                problems.append(
                    "--canary-traffic-percent needs --kserve-mode knative: KServe splits "
                    "traffic between revisions only there"
                )
            if not 0 <= self.canary_traffic_percent <= 100:
                problems.append("--canary-traffic-percent must be between 0 and 100")
        if self.scale_target is not None and self.scale_target < 1:
            problems.append("--scale-target must be at least 1")
        return problems

    @property
    def keys_secret(self) -> str | None:
        """The API-key Secret the pods mount, or None without keys."""
        if self.allow_unauthenticated:
            return None
        return self.api_key_secret or f"{self.name}-api-keys"

    @property
    def target(self) -> int:
        return self.scale_target or DEFAULT_SCALE_TARGET[self.scale_metric]

    @property
    def runtime(self) -> str:
        return self.runtime_name or f"{self.name}-runtime"

    @property
    def settings_config_map(self) -> str:
        return f"{self.name}-settings"
