"""API keys: the key file, the checks, reloading, and `modelport keys` (security/, cli/keys.py)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelport.cli.main import cli
from modelport.core.errors import ErrorKind
from modelport.security.access import AccessControl
from modelport.security.keys import (
    KeyEntry,
    KeyFileError,
    generate_key,
    key_digest,
    read_key_file,
    write_key_file,
)
from modelport.security.policy import (
    KeyForbidden,
    KeyRateLimited,
    KeyRefused,
    Principal,
    Scope,
    build_policy,
)


def entry(name: str, key: str, *scopes: str, **fields: object) -> KeyEntry:
    return KeyEntry.model_validate(
        {"name": name, "sha256": key_digest(key), "scopes": scopes or ("inference",), **fields}
    )


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


# -- the key file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys: [", "is not valid YAML"),
        ("keyz: []", "keyz: Extra inputs are not permitted"),
        ("keys:\n- name: ci\n  scopes: [inference]\n", "entry 1 ('ci'): sha256: Field required"),
        (
            f"keys:\n- name: ci\n  sha256: {'a' * 64}\n  scopes: [admin]\n",
            "entry 1 ('ci'): scopes.0: Input should be 'inference', 'management' or 'metrics'",
        ),
        (
            f"keys:\n- name: ci\n  sha256: {'a' * 63}\n  scopes: [inference]\n",
            "entry 1 ('ci'): sha256: String should match pattern",
        ),
        (
            f"keys:\n- name: a\n  sha256: {'a' * 64}\n  scopes: [inference]\n"
            f"- name: a\n  sha256: {'b' * 64}\n  scopes: [metrics]\n",
            "entry 2 ('a'): the name is used twice",
        ),
        (
            f"keys:\n- name: 'a b'\n  sha256: {'a' * 64}\n  scopes: [inference]\n",
            "entry 1 ('a b'): name: name 'a b' must be 1-64 letters",
        ),
        (
            f"keys:\n- name: x\n  sha256: {'a' * 64}\n  scopes: [inference]\n  models: []\n",
            "entry 1 ('x'): models: models must list non-empty patterns",
        ),
        (
            f"keys:\n- name: x\n  sha256: {'a' * 64}\n  scopes: []\n",
            "entry 1 ('x'): scopes: Tuple should have at least 1 item",
        ),
        (
            f"keys:\n- name: x\n  sha256: {'a' * 64}\n  scopes: [inference]\n"
            "  rate_limit: {requests_per_second: 0, burst: 1}\n",
            "entry 1 ('x'): rate_limit.requests_per_second: Input should be greater than 0",
        ),
        (
            f"keys:\n- name: MODELPORT_API_KEY\n  sha256: {'a' * 64}\n  scopes: [inference]\n",
            "reserved for that variable's key",
        ),
    ],
)
def test_a_bad_key_file_names_the_file_and_the_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeyFileError) as caught:
        read_key_file(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"cannot read the key file .*nope\.yaml"):
        read_key_file(tmp_path / "nope.yaml")


def test_a_written_key_file_reads_back_and_only_its_owner_may_read_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    entries = [
        entry("ci", "k1", models=("fraud-*",), rate_limit={"requests_per_second": 5, "burst": 9}),
        entry("ops", "k2", "management", "metrics"),
    ]
    write_key_file(path, entries)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == entries
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_generated_keys_carry_256_random_bits() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith("mp_") and len(key) == 3 + 43 for key in keys)


# -- the checks -------------------------------------------------------------------------------


def test_authenticate_finds_the_key_and_refuses_the_rest_saying_why() -> None:
    policy = build_policy([entry("ci", "secret-1"), entry("ops", "secret-2")], env_key=None)
    assert policy.authenticate(bearer("secret-2")).name == "ops"
    assert policy.authenticate(b"bearer   secret-1 ").name == "ci"  # scheme is case-insensitive
    for value, reason in [
        (None, "missing"),
        (b"Basic c2VjcmV0LTE=", "malformed"),
        (b"Bearer", "malformed"),
        (b"Bearer ", "malformed"),
        (bearer("secret-3"), "unknown"),
    ]:
        with pytest.raises(KeyRefused) as caught:
            policy.authenticate(value)
        assert caught.value.reason == reason
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        assert "secret" not in caught.value.message


def test_authenticate_compares_full_digests_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Candidates come from a prefix of the digest (a dict: the cost does not grow with the
    number of keys); the full digest is then compared with hmac.compare_digest, never ==."""
    policy = build_policy([entry(f"k{i}", f"secret-{i}") for i in range(50)], env_key=None)
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert policy.authenticate(bearer("secret-7")).name == "k7"
    assert compared == [hashlib.sha256(b"secret-7").digest()]
    with pytest.raises(KeyRefused):
        policy.authenticate(bearer("secret-50"))


def test_the_environment_key_has_every_scope_and_model() -> None:
    policy = build_policy([], env_key="from-env")
    principal = policy.authenticate(bearer("from-env"))
    assert principal.name == "MODELPORT_API_KEY"
    for scope in Scope:
        principal.admit(scope, "any-model")


def test_scopes_and_model_patterns() -> None:
    principal = Principal("ci", [Scope.INFERENCE], ["fraud-*", "exact"])
    principal.admit(Scope.INFERENCE, "fraud-eu")
    principal.admit(Scope.INFERENCE, "exact")
    principal.admit(Scope.INFERENCE, None)  # a request that names no model
    principal.admit(None, None)  # any valid key
    with pytest.raises(KeyForbidden, match="API key 'ci' may not use model 'Fraud-eu'"):
        principal.admit(Scope.INFERENCE, "Fraud-eu")  # model names are case sensitive
    with pytest.raises(KeyForbidden, match="may not use model 'exactly'"):
        principal.admit(Scope.INFERENCE, "exactly")
    with pytest.raises(KeyForbidden, match="API key 'ci' has no 'management' scope") as caught:
        principal.admit(Scope.MANAGEMENT, "fraud-eu")
    assert caught.value.kind is ErrorKind.FORBIDDEN and caught.value.reason == "scope"


def test_the_pattern_cache_stays_bounded() -> None:
    principal = Principal("ci", [Scope.INFERENCE], ["m-*"])
    for number in range(5000):
        assert principal.may_use(f"m-{number}")
        assert not principal.may_use(f"x-{number}")
    assert len(principal._allowed) <= 1024


def test_a_key_over_its_rate_limit_is_refused_with_the_wait() -> None:
    limit = {"requests_per_second": 0.5, "burst": 2}
    keys = [entry("ci", "s", "inference", "metrics", rate_limit=limit)]
    principal = build_policy(keys, env_key=None).authenticate(bearer("s"))
    principal.admit(Scope.INFERENCE, "m")
    principal.admit(Scope.INFERENCE, "m")
    principal.admit(Scope.METRICS, "m")  # not the data plane: takes no token
    with pytest.raises(KeyRateLimited) as caught:
        principal.admit(Scope.INFERENCE, "m")
    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert caught.value.key_name == "ci"
    assert 1.0 < caught.value.retry_after <= 2.0


def test_a_reload_keeps_the_bucket_of_an_unchanged_key() -> None:
    limit = {"requests_per_second": 0.1, "burst": 1}
    first = build_policy([entry("ci", "s", rate_limit=limit)], env_key=None)
    first.authenticate(bearer("s")).admit(Scope.INFERENCE, None)
    again = build_policy([entry("ci", "s", rate_limit=limit), entry("b", "t")], None, first)
    with pytest.raises(KeyRateLimited):
        again.authenticate(bearer("s")).admit(Scope.INFERENCE, None)


# -- reloading --------------------------------------------------------------------------------


def test_reload_takes_new_keys_and_refuses_every_key_on_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    write_key_file(path, [entry("ci", "one")])
    access = AccessControl.from_sources(path, env_key=None)
    assert access.enabled
    assert not access.reload_if_changed()  # nothing changed

    write_key_file(path, [entry("ci", "one"), entry("new", "two")])
    assert access.reload_if_changed()
    assert access.policy.authenticate(bearer("two")).name == "new"

    path.write_text("keys: [{name: broken\n")
    with caplog.at_level(logging.ERROR, logger="modelport.security"):
        assert not access.reload_if_changed()
        assert not access.reload_if_changed()  # reported once per change, not per poll
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()
    assert "every API key is refused until the file is valid again" in (
        caplog.records[0].getMessage()
    )
    with pytest.raises(KeyRefused):
        access.policy.authenticate(bearer("two"))

    write_key_file(path, [entry("new", "two")])  # "ci" revoked
    assert access.reload_if_changed()
    with pytest.raises(KeyRefused):
        access.policy.authenticate(bearer("one"))


def test_no_keys_configured_means_open() -> None:
    access = AccessControl.from_sources(None, env_key=None)
    assert not access.enabled


# -- modelport keys ---------------------------------------------------------------------------


def run_keys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["keys", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_keys_add_prints_the_key_and_nothing_else_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.yaml"
    path.parent.mkdir()
    code, out, err = run_keys(
        "add", "ci", "--api-keys", str(path), "--scope", "inference", "--scope", "metrics",
        "--models", "fraud-*", "--models", "spam", "--rate-limit", "2.5",
    )  # fmt: skip
    assert code == 0, err
    key = out.removesuffix("\n")
    assert out == key + "\n" and key.startswith("mp_") and "\n" not in key
    assert "added the key 'ci'" in err and key not in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in path.read_text()
    (stored,) = read_key_file(path)
    assert stored.sha256 == key_digest(key)
    assert stored.scopes == ("inference", "metrics")
    assert stored.models == ("fraud-*", "spam")
    assert stored.rate_limit is not None and stored.rate_limit.burst == 3

    code, out, _ = run_keys("add", "ops", "--api-keys", str(path))
    assert code == 0
    assert [e.scopes for e in read_key_file(path)] == [("inference", "metrics"), ("inference",)]


def test_keys_add_refuses_a_duplicate_name(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    assert run_keys("add", "ci", "--api-keys", str(path))[0] == 0
    before = path.read_text()
    code, out, err = run_keys("add", "ci", "--api-keys", str(path))
    assert code == 1 and out == ""
    assert "has a key named 'ci' already" in err
    assert path.read_text() == before


def test_keys_list_and_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.yaml"
    monkeypatch.setenv("MODELPORT_API_KEYS", str(path))  # --api-keys from the environment
    run_keys("add", "ci", "--models", "fraud-*", "--rate-limit", "5", "--burst", "10")
    run_keys("add", "ops", "--scope", "management")
    code, out, _ = run_keys("list")
    assert code == 0
    assert "fraud-*" in out and "5/s, burst 10" in out and "every model" in out
    assert all(e.sha256 not in out for e in read_key_file(path))

    code, out, _ = run_keys("revoke", "ci")
    assert code == 0 and "revoked the key 'ci'" in out
    assert [e.name for e in read_key_file(path)] == ["ops"]
    code, _, err = run_keys("revoke", "ci")
    assert code == 1 and "has no key named 'ci'" in err


def test_keys_commands_explain_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: 3\n")
    code, _, err = run_keys("list", "--api-keys", str(path))
    assert code == 1 and str(path) in err and "Input should be a valid list" in err
