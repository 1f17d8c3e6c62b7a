"""API keys on the gRPC port: the `authorization` metadata (`Bearer KEY`), checked per call.

The key and the method's scope are checked once, when the stream's headers arrive (a refusal is
a Trailers-Only answer); the model a message names, and the key's rate limit, when each message
is taken: before the handler of a unary call, and for every ModelStreamInfer request, whose
refusal is that request's error in the stream (the stream goes on). Health methods are open
unless health is protected; methods we do not know need a valid key, then answer UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from modelport.core.errors import public_error
from modelport.security.access import AccessControl
from modelport.security.audit import ANONYMOUS
from modelport.security.policy import ACCESS_REFUSALS, Principal, Scope

Handler = Callable[[Any, Any], Awaitable[Message]]

_HEALTH = frozenset({"ServerLive", "ServerReady"})
_SCOPES = {
    "ServerMetadata": Scope.INFERENCE,
    "ModelMetadata": Scope.INFERENCE,
    "ModelReady": Scope.INFERENCE,
    "ModelConfig": Scope.INFERENCE,
    "ModelInfer": Scope.INFERENCE,
    "ModelStreamInfer": Scope.INFERENCE,
    "ModelStatistics": Scope.METRICS,
}
"""Every other method is management (the repository's)."""
_ACTIONS = {"RepositoryModelLoad": "load", "RepositoryModelUnload": "unload"}
_MODEL_FIELDS = ("model_name", "name")


@dataclass(frozen=True, slots=True)
class MethodRule:
    """What a method needs. `scope` None: any valid key."""

    scope: Scope | None
    model_field: str | None = None
    """The request field naming the model; empty in a request means none (e.g. every model's
    statistics)."""
    health: bool = False
    action: str | None = None


_ANY_KEY = MethodRule(None)


def method_rules(service: ServiceDescriptor) -> dict[bytes, MethodRule]:
    rules = {}
    for method in service.methods:
        fields = method.input_type.fields_by_name
        model_field = next((name for name in _MODEL_FIELDS if name in fields), None)
        name = method.name
        if name in _HEALTH:
            rule = MethodRule(None, health=True)
        else:
            scope = _SCOPES.get(name, Scope.MANAGEMENT)
            rule = MethodRule(scope, model_field, action=_ACTIONS.get(name))
        rules[f"/{service.full_name}/{name}".encode()] = rule
    return rules


class GrpcGuard:
    """The Dispatcher's check of each new stream."""

    def __init__(self, access: AccessControl, service: ServiceDescriptor) -> None:
        self._access = access
        self._rules = method_rules(service)

    def permit(self, path: bytes, authorization: bytes | None, peer: str) -> CallPermit | None:
        """None: nothing to check for this call. Raises the refusal (after reporting it)."""
        rule = self._rules.get(path, _ANY_KEY)
        access = self._access
        if not access.enabled or (rule.health and not access.protect_health):
            return None if rule.action is None else CallPermit(access, rule, None, peer)
        try:
            principal = access.policy.authenticate(authorization)
            principal.require_scope(rule.scope)
        except ACCESS_REFUSALS as exc:
            access.refused(exc, peer)
            raise
        return CallPermit(access, rule, principal, peer)


class CallPermit:
    """One call's key (None when keys are off) and what its messages are checked against."""

    __slots__ = ("_access", "_peer", "_principal", "_rule")

    def __init__(
        self, access: AccessControl, rule: MethodRule, principal: Principal | None, peer: str
    ) -> None:
        self._access = access
        self._rule = rule
        self._principal = principal
        self._peer = peer

    @property
    def key_name(self) -> str | None:
        """The name of the call's API key (the access log's), None without one."""
        return None if self._principal is None else self._principal.name

    def admit(self, model: str) -> None:
        """A message naming `model` ("" for none): KeyForbidden / KeyRateLimited if refused."""
        principal = self._principal
        if principal is None:
            return
        try:
            principal.admit(self._rule.scope, model or None)
        except ACCESS_REFUSALS as exc:
            self._access.refused(exc, self._peer)
            raise

    def run(self, handler: Handler, request: Message, call: object) -> Awaitable[Message]:
        """A unary call: admit its message (raising here if refused), then the handler's
        awaitable, audited if the method is a management action. A plain call rather than a
        coroutine, so inference calls pay for no extra coroutine."""
        rule = self._rule
        model = "" if rule.model_field is None else str(getattr(request, rule.model_field))
        self.admit(model)
        if rule.action is None:
            return handler(request, call)
        return self._audited(handler, request, call, model)

    async def _audited(
        self, handler: Handler, request: Message, call: object, model: str
    ) -> Message:
        rule = self._rule
        assert rule.action is not None
        outcome = "the call ended without an answer"
        try:
            reply = await handler(request, call)
            outcome = "ok"
            return reply
        except Exception as exc:
            outcome = public_error(exc).message
            raise
        finally:
            name = ANONYMOUS if self._principal is None else self._principal.name
            self._access.audit.management(rule.action, name, self._peer, model, outcome)
