"""What the image and the manifests agree on: ports, paths, the user and the settings' names."""

from __future__ import annotations

import re

HTTP_PORT = 8080
"""v2 REST (and TF Serving REST, /metrics, health): the port KServe expects HTTP on."""
GRPC_PORT = 9000
"""v2 gRPC: the port KServe's runtimes use for gRPC."""

IMAGE_MODELS = "/models"
"""Where `modelport build` puts the repository in the image (or where it expects a mount)."""
KSERVE_MODELS = "/mnt/models"
"""Where KServe's storage initializer puts what an InferenceService's storageUri names."""

USER_ID = 10001
"""The image's user and group: not 0, and above the ranges distributions hand out."""
USER_NAME = "modelport"

KEYS_DIR = "/etc/modelport/api-keys"
KEYS_FILE_NAME = "keys.yaml"
"""The key in the API-key Secret holding the key file (`modelport keys add` writes it)."""
TLS_DIR = "/etc/modelport/tls"

READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"

# Kubernetes names: a DNS-1035 label (a Service's name must be one). Shorter than the 63
# characters allowed, so that the suffixes added here and by KServe (-predictor, -api-keys)
# still fit.
NAME_MAX = 45
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

# An image reference: [registry[:port]/]path[:tag][@digest], as `docker build -t` takes it.
_IMAGE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def resource_name_problem(name: str, what: str = "name") -> str | None:
    """Why `name` cannot name the resources, or None when it can."""
    if len(name) > NAME_MAX:
        return f"{what} '{name}' is longer than {NAME_MAX} characters"
    if not _NAME.fullmatch(name):
        return (
            f"{what} '{name}' is not a Kubernetes name: lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def image_problem(image: str) -> str | None:
    """Why `image` is not an image reference, or None when it is one."""
    if len(image) > 255 or not _IMAGE.fullmatch(image):
        return (
            f"'{image}' is not an image reference (e.g. registry.example.com/team/models:1.0, "
            "lower-case path, optional :tag)"
        )
    return None
