"""The checks: which key a request presents, and whether that key may do what it asks.

`KeyPolicy.authenticate` finds the principal of an `Authorization: Bearer KEY` value;
`Principal.require_scope` / `Principal.admit` decide on a scope and a model, and take a token
of the key's rate limit for inference. Each refusal is an error of the core's hierarchy
(Unauthenticated, Forbidden, RateLimited) that also says why, for the audit log and metrics.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence

from modelport.core.errors import Forbidden, RateLimited, Unauthenticated
from modelport.core.limits import TokenBucket
from modelport.security.keys import ENV_KEY_NAME, KeyEntry, key_digest

DIGEST_PREFIX = 8
"""Bytes of a key's SHA-256 that select the stored digests it is compared with."""

MODEL_CACHE_SIZE = 1024
"""Model names whose pattern result a principal remembers; past it the memory starts over."""


class Scope(enum.Enum):
    INFERENCE = "inference"
    MANAGEMENT = "management"
    METRICS = "metrics"


ALL_SCOPES = frozenset(Scope)


class KeyRefused(Unauthenticated):
    """No usable key. `reason`: "missing", "malformed" or "unknown"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyForbidden(Forbidden):
    """A known key outside its scopes ("scope") or its models ("model")."""

    def __init__(self, key_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.key_name = key_name
        self.reason = reason


class KeyRateLimited(RateLimited):
    def __init__(self, key_name: str, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after)
        self.key_name = key_name


AccessRefusal = KeyRefused | KeyForbidden | KeyRateLimited
ACCESS_REFUSALS = (KeyRefused, KeyForbidden, KeyRateLimited)
"""For `except`: every refusal the checks raise."""

# A fresh error per refusal: raising one instance again would keep growing its traceback.
REFUSALS = {
    "missing": "missing API key: send the header 'Authorization: Bearer KEY'",
    "malformed": "malformed Authorization header: expected 'Bearer KEY'",
    "unknown": "unknown API key",
}


def _refusal(reason: str) -> KeyRefused:
    return KeyRefused(reason, REFUSALS[reason])


class Principal:
    """What one key may do: its scopes, the models its patterns match, its rate limit."""

    __slots__ = ("_allowed", "_matches", "bucket", "name", "patterns", "scopes")

    def __init__(
        self,
        name: str,
        scopes: Iterable[Scope],
        patterns: Sequence[str] | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.name = name
        self.scopes = frozenset(scopes)
        self.patterns = None if patterns is None else tuple(patterns)
        self.bucket = bucket
        self._matches = _compile(self.patterns)
        self._allowed: dict[str, bool] = {}

    def require_scope(self, scope: Scope | None) -> None:
        """None asks only for a valid key."""
        if scope is not None and scope not in self.scopes:
            raise KeyForbidden(
                self.name, "scope", f"API key '{self.name}' has no '{scope.value}' scope"
            )

    def admit(self, scope: Scope | None, model: str | None) -> None:
        """Scope, then model (None: the request names none), then for inference the key's rate
        limit: raises KeyForbidden or KeyRateLimited."""
        self.require_scope(scope)
        if model is not None and self._matches is not None and not self.may_use(model):
            raise KeyForbidden(
                self.name, "model", f"API key '{self.name}' may not use model '{model}'"
            )
        if self.bucket is not None and scope is Scope.INFERENCE:
            wait = self.bucket.try_take()
            if wait > 0.0:
                limit = self.bucket.limit
                raise KeyRateLimited(
                    self.name,
                    f"API key '{self.name}' is over its rate limit of "
                    f"{limit.requests_per_second:g} requests per second (burst {limit.burst}); "
                    f"retry in {wait:.3f} s",
                    wait,
                )

    def may_use(self, model: str) -> bool:
        matches = self._matches
        if matches is None:
            return True
        allowed = self._allowed.get(model)
        if allowed is None:
            if len(self._allowed) >= MODEL_CACHE_SIZE:
                self._allowed.clear()
            allowed = self._allowed[model] = matches(model) is not None
        return allowed


def _compile(patterns: tuple[str, ...] | None) -> Callable[[str], object] | None:
    """One regular expression for all of a key's patterns, translated once (fnmatch, case
    sensitive as model names are)."""
    if patterns is None:
        return None
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


class KeyPolicy:
    """A fixed set of keys. A reload builds a new policy; requests in flight keep the old one."""

    __slots__ = ("_by_prefix", "principals")

    def __init__(self, keys: Sequence[tuple[bytes, Principal]]) -> None:
        self._by_prefix: dict[bytes, list[tuple[bytes, Principal]]] = {}
        for digest, principal in keys:
            self._by_prefix.setdefault(digest[:DIGEST_PREFIX], []).append((digest, principal))
        self.principals = tuple(principal for _, principal in keys)

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal of an Authorization value (`Bearer KEY`), or KeyRefused."""
        if authorization is None:
            raise _refusal("missing")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if not token or scheme.lower() != b"bearer":
            raise _refusal("malformed")
        digest = hashlib.sha256(token).digest()
        found: Principal | None = None
        # The candidates are found by the first bytes of the presented key's SHA-256, so the
        # cost does not grow with the number of keys; how long that lookup takes depends on
        # the digest of the attacker's own guess only, which tells nothing about a stored key
        # (aiming at one would take a preimage). The full digests are then compared in
        # constant time.
        for stored, principal in self._by_prefix.get(digest[:DIGEST_PREFIX], ()):
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise _refusal("unknown")
        return found


def build_policy(
    entries: Iterable[KeyEntry], env_key: str | None, previous: KeyPolicy | None = None
) -> KeyPolicy:
    """The policy for a key file's entries plus the MODELPORT_API_KEY key (every scope, every
    model). A key whose name and rate limit did not change keeps its bucket across reloads."""
    buckets = {
        principal.name: principal.bucket
        for principal in (previous.principals if previous is not None else ())
        if principal.bucket is not None
    }
    keys: list[tuple[bytes, Principal]] = []
    if env_key:
        keys.append((bytes.fromhex(key_digest(env_key)), Principal(ENV_KEY_NAME, ALL_SCOPES)))
    for entry in entries:
        bucket = None
        if entry.rate_limit is not None:
            limit = entry.rate_limit.limit()
            kept = buckets.get(entry.name)
            bucket = kept if kept is not None and kept.limit == limit else TokenBucket(limit)
        scopes = (Scope(name) for name in entry.scopes)
        principal = Principal(entry.name, scopes, entry.models, bucket)
        keys.append((bytes.fromhex(entry.sha256), principal))
    return KeyPolicy(keys)
