"""What each REST path and gRPC method needs (frontends/rest/access_guard.py, grpc/access.py).

Every route the HTTP app serves is checked against the classifier, so a route added later
without a rule fails here instead of being served to any valid key."""

from __future__ import annotations

import hashlib
import re
from typing import cast

import pytest
from tritonclient.grpc import service_pb2

from modelport.core.data_plane import DataPlane
from modelport.frontends.grpc.access import method_rules
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.rest.access_guard import Rule, classify
from modelport.frontends.rest.tfserving import TFServingEndpoints
from modelport.frontends.rest.v2 import V2Endpoints
from modelport.security.policy import DIGEST_PREFIX, KeyPolicy, KeyRefused, Principal, Scope

INFERENCE, METRICS, MANAGEMENT = Scope.INFERENCE, Scope.METRICS, Scope.MANAGEMENT


def route_paths() -> list[str]:
    plane = cast(DataPlane, None)  # routes() reads no state
    routes = [*V2Endpoints(plane).routes(), *TFServingEndpoints(plane, 1, OffLoop()).routes()]
    values = {"model": "fraud-eu", "version": "3", "label": "stable"}
    paths = [re.sub(r"{(\w+)}", lambda m: values[m.group(1)], route.path) for route in routes]
    served_elsewhere = [
        "/v2/models/fraud-eu/infer",  # the infer fast path
        "/v2/models/fraud-eu/versions/3/infer",
        "/metrics",
        "/v2/alerts",  # rest/alerts.py
        "/dashboard",  # rest/dashboard/routes.py
        "/dashboard/static/dashboard.js",
        "/dashboard/api/series",
    ]
    return [*paths, *served_elsewhere]


EXPECTED = {
    "/v2/health/live": Rule(None, health=True),
    "/v2/health/ready": Rule(None, health=True),
    "/v2": Rule(INFERENCE),
    "/v2/models/stats": Rule(METRICS),
    "/v2/repository/index": Rule(MANAGEMENT),
    "/v2/repository/models/fraud-eu/load": Rule(MANAGEMENT, "fraud-eu", action="load"),
    "/v2/repository/models/fraud-eu/unload": Rule(MANAGEMENT, "fraud-eu", action="unload"),
    "/metrics": Rule(METRICS),
    "/v2/alerts": Rule(METRICS),
    "/dashboard": Rule(None, public=True),
    "/dashboard/static/dashboard.js": Rule(None, public=True),
    "/dashboard/api/series": Rule(METRICS),
}


@pytest.mark.parametrize("path", route_paths())
def test_every_route_has_its_rule(path: str) -> None:
    rule = classify(path)
    if path in EXPECTED:
        assert rule == EXPECTED[path]
    elif path.endswith("/stats"):
        assert rule == Rule(METRICS, "fraud-eu")
    else:  # metadata, ready, config, infer; TF Serving's status, metadata, predict
        assert rule == Rule(INFERENCE, "fraud-eu")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2/",
        "/v2/nothing",
        "/v2/health",
        "/v2/health/live/x",
        "/v2/models/",
        "/v2/models/m/",
        "/v2/models/m/other",
        "/v2/models/m/versions//infer",
        "/v2/models/m/x/y",
        "/v2/repository/models/m/delete",
        "/v2/repository/models//load",
        "/v1/models/",
        "/metrics/x",
        "//v2",
    ],
)
def test_paths_no_route_serves_need_only_a_valid_key(path: str) -> None:
    assert classify(path) == Rule(None)


def test_tfserving_models_are_read_as_the_route_reads_them() -> None:
    assert classify("/v1/models/a:predict") == Rule(INFERENCE, "a")
    assert classify("/v1/models/a:b:predict") == Rule(INFERENCE, "a:b")  # {model} is "a:b"
    assert classify("/v1/models/a/versions/2:classify") == Rule(INFERENCE, "a")
    assert classify("/v1/models/a") == Rule(INFERENCE, "a")


def test_grpc_methods() -> None:
    # tritonclient's descriptor of the same service (ours must not be imported next to it, see
    # frontends/grpc/__init__.py): the same methods, plus ones we do not serve
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rules = {path.decode().rpartition("/")[2]: rule for path, rule in method_rules(service).items()}
    assert service.full_name == "inference.GRPCInferenceService"
    assert {name for name, rule in rules.items() if rule.health} == {"ServerLive", "ServerReady"}
    served = {
        "ServerMetadata", "ModelMetadata", "ModelReady", "ModelConfig", "ModelInfer",
        "ModelStreamInfer", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
        "RepositoryModelUnload",
    }  # fmt: skip
    scopes = {name: rules[name].scope for name in served}
    assert all(rule.scope is MANAGEMENT for name, rule in rules.items() if name.endswith("Memory"))
    assert scopes == {
        "ServerMetadata": INFERENCE,
        "ModelMetadata": INFERENCE,
        "ModelReady": INFERENCE,
        "ModelConfig": INFERENCE,
        "ModelInfer": INFERENCE,
        "ModelStreamInfer": INFERENCE,
        "ModelStatistics": METRICS,
        "RepositoryIndex": MANAGEMENT,
        "RepositoryModelLoad": MANAGEMENT,
        "RepositoryModelUnload": MANAGEMENT,
    }
    assert rules["ModelInfer"].model_field == "model_name"
    assert rules["ModelMetadata"].model_field == "name"
    assert rules["RepositoryModelUnload"].model_field == "model_name"
    assert rules["RepositoryIndex"].model_field is None
    assert {name for name, rule in rules.items() if rule.action} == {
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


def test_keys_sharing_a_digest_prefix_are_told_apart() -> None:
    """Candidates are chosen by a prefix of the digest; the full digest decides."""
    tokens = [f"key-{i}".encode() for i in range(500)]
    digests = [hashlib.sha256(token).digest() for token in tokens]
    principals = [Principal(f"k{i}", [Scope.INFERENCE]) for i in range(500)]
    # a stored digest with the same prefix as key-7's but another tail
    twin = digests[7][:DIGEST_PREFIX] + bytes(32 - DIGEST_PREFIX)
    policy = KeyPolicy([*zip(digests, principals, strict=True), (twin, Principal("twin", []))])
    for index in (0, 7, 499):
        assert policy.authenticate(b"Bearer " + tokens[index]) is principals[index]
    with pytest.raises(KeyRefused) as refused:
        policy.authenticate(b"Bearer key-500")
    assert refused.value.reason == "unknown"
    assert len(policy.principals) == 501
