"""API keys on the HTTP port: an ASGI middleware outermost, in front of the infer fast path.

Each path is classified once (plain splits, remembered per path): the scope it needs and the
model it names, the way the routes beneath read it. Health is open unless protected; paths no
route serves need a valid key (then answer 404 as before), so probing for routes needs a key.
Refusals answer 401 with `WWW-Authenticate: Bearer` (RFC 6750), 403, or 429 with Retry-After,
in the v2 error shape. Model loads and unloads are audited with their outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.frontends.rest.dashboard import STATIC_TYPES as DASHBOARD_FILES
from modelport.frontends.rest.errors import error_headers, error_json
from modelport.frontends.status import http_status
from modelport.security.access import AccessControl
from modelport.security.audit import ANONYMOUS
from modelport.security.policy import (
    ACCESS_REFUSALS,
    REFUSALS,
    AccessRefusal,
    KeyRefused,
)
from modelport.security.policy import Scope as KeyScope

KEY_NAME = "modelport.key"
"""The ASGI scope's entry for the name of the API key a request came with (the access log's)."""
RULE_CACHE_SIZE = 4096
"""Paths whose rule is remembered; past it the memory starts over (paths come from clients)."""
_AUDIT_BODY_BYTES = 2048
_JSON = (b"content-type", b"application/json")
_CHALLENGES = {
    "missing": b"Bearer",
    "malformed": b'Bearer error="invalid_request"',
    "unknown": b'Bearer error="invalid_token"',
}
_UNAUTHENTICATED = {
    reason: (
        [_JSON, (b"www-authenticate", challenge)],
        error_json(REFUSALS[reason]),
    )
    for reason, challenge in _CHALLENGES.items()
}


@dataclass(frozen=True, slots=True)
class Rule:
    """What a path needs. `scope` None: any valid key."""

    scope: KeyScope | None
    model: str | None = None
    health: bool = False
    action: str | None = None
    """"load" / "unload": a management action, audited."""
    public: bool = False
    """Open even with keys: the dashboard's page and files (they hold no data)."""


_ANY_KEY = Rule(None)
_HEALTH = Rule(None, health=True)
_INFERENCE = Rule(KeyScope.INFERENCE)
_METRICS = Rule(KeyScope.METRICS)
_MANAGEMENT = Rule(KeyScope.MANAGEMENT)
_PUBLIC = Rule(None, public=True)
_MODEL_ROUTES: dict[str | None, KeyScope] = {
    None: KeyScope.INFERENCE,  # the model's metadata
    "ready": KeyScope.INFERENCE,
    "config": KeyScope.INFERENCE,
    "infer": KeyScope.INFERENCE,
    "stats": KeyScope.METRICS,
}


def classify(path: str) -> Rule:
    """The rule of a request path (already percent-decoded, as the routes match it)."""
    parts = path.split("/")
    top = parts[1] if len(parts) > 1 and not parts[0] else None
    if top == "metrics" and len(parts) == 2:
        return _METRICS
    if top == "v2":
        return _v2_rule(parts)
    if top == "v1" and len(parts) >= 4 and parts[2] == "models" and parts[3]:
        return _tfserving_rule(parts)
    if top == "dashboard":
        return _dashboard_rule(parts)
    return _ANY_KEY


def _dashboard_rule(parts: list[str]) -> Rule:
    """The page (and `/dashboard/`, redirected to it) and its named files are open; a browser
    sends no key when it navigates. Its data needs the metrics scope."""
    count = len(parts)
    if count == 2 or (count == 3 and not parts[2]):
        return _PUBLIC
    if count == 4 and parts[2] == "static" and parts[3] in DASHBOARD_FILES:
        return _PUBLIC
    if count == 4 and parts[2] == "api" and parts[3] == "series":
        return _METRICS
    return _ANY_KEY


def _v2_rule(parts: list[str]) -> Rule:
    count = len(parts)
    if count == 2:
        return _INFERENCE  # server metadata
    section = parts[2]
    if section == "health" and count == 4 and parts[3] in ("live", "ready"):
        return _HEALTH
    if section == "alerts" and count == 3:
        return _METRICS
    if section == "repository":
        if count == 4 and parts[3] == "index":
            return _MANAGEMENT
        if count == 6 and parts[3] == "models" and parts[4] and parts[5] in ("load", "unload"):
            return Rule(KeyScope.MANAGEMENT, parts[4], action=parts[5])
        return _ANY_KEY
    if section != "models" or count < 4 or not parts[3]:
        return _ANY_KEY
    if count == 4 and parts[3] == "stats":
        return _METRICS  # every model's statistics
    model = parts[3]
    if count in (6, 7) and parts[4] == "versions" and parts[5]:
        tail = parts[6] if count == 7 else None
    elif count in (4, 5):
        tail = parts[4] if count == 5 else None
    else:
        return _ANY_KEY
    scope = _MODEL_ROUTES.get(tail)
    return _ANY_KEY if scope is None else Rule(scope, model)


def _tfserving_rule(parts: list[str]) -> Rule:
    """`/v1/models/{m}[/versions/{v}|/labels/{l}][/metadata|:predict|...]`: the route's
    `{model}` stops at the last ':' of a path with no further segment."""
    segment = parts[3]
    if len(parts) == 4:
        head, colon, _ = segment.rpartition(":")
        segment = head if colon else segment
    return Rule(KeyScope.INFERENCE, segment) if segment else _ANY_KEY


class AccessGuard:
    """ASGI middleware checking API keys before anything else runs."""

    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self._app = app
        self._access = access
        self._rules: dict[str, Rule] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        rule = self._rules.get(path)
        if rule is None:
            rule = self._remember(path)
        access = self._access
        if not access.enabled or rule.public or (rule.health and not access.protect_health):
            if rule.action is None:
                await self._app(scope, receive, send)
            else:
                await self._audited(rule, ANONYMOUS, scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        try:
            principal = access.policy.authenticate(authorization)
            scope[KEY_NAME] = principal.name
            principal.admit(rule.scope, rule.model)
        except ACCESS_REFUSALS as exc:
            access.refused(exc, _client(scope))
            await _refuse(send, exc)
            return
        if rule.action is None:
            await self._app(scope, receive, send)
        else:
            await self._audited(rule, principal.name, scope, receive, send)

    def _remember(self, path: str) -> Rule:
        if len(self._rules) >= RULE_CACHE_SIZE:
            self._rules.clear()
        rule = self._rules[path] = classify(path)
        return rule

    async def _audited(
        self, rule: Rule, key_name: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        status = 0
        body = b""

        async def watch(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(body) < _AUDIT_BODY_BYTES:
                body += message.get("body", b"")
            await send(message)

        outcome = "the request ended without an answer"
        try:
            await self._app(scope, receive, watch)
            outcome = "ok" if status == 200 else f"{status} {_error_message(body)}"
        finally:
            assert rule.action is not None and rule.model is not None
            self._access.audit.management(
                rule.action, key_name, _client(scope), rule.model, outcome
            )


async def _refuse(send: Send, error: AccessRefusal) -> None:
    if isinstance(error, KeyRefused):
        headers, payload = _UNAUTHENTICATED[error.reason]
    else:
        headers, payload = [_JSON, *error_headers(error)], error_json(error.message)
    status = http_status(error.kind)
    headers = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _error_message(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(no error message)"
    return str(document.get("error", "")) if isinstance(document, dict) else "(no error message)"
