"""A key file that turns unreadable or invalid while the server runs fails closed: every key
is refused until the file is valid again (security/access.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelport.security.access import AccessControl
from modelport.security.keys import ENV_KEY_NAME, KeyEntry, key_digest, write_key_file
from modelport.security.policy import KeyRateLimited, KeyRefused, Scope

ENV_KEY = "mp_the-environment-key"


def entry(name: str, key: str, **fields: object) -> KeyEntry:
    return KeyEntry.model_validate(
        {"name": name, "sha256": key_digest(key), "scopes": ["inference"], **fields}
    )


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def refused(access: AccessControl, key: str) -> bool:
    try:
        access.policy.authenticate(bearer(key))
    except KeyRefused as refusal:
        assert refusal.reason == "unknown"  # 401, WWW-Authenticate: Bearer error="invalid_token"
        return True
    return False


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    write_key_file(path, [entry("ci", "one"), entry("ops", "two")])
    return path


def breakages() -> list[tuple[str, str]]:
    """(what is written over the file, what the log line says)"""
    return [
        ("keys: [{name: broken\n", "is not valid YAML"),
        ("keys:\n- name: ci\n  sha256: 12\n  scopes: [inference]\n", "entry 1 ('ci'): sha256"),
        ("keys: 3\n", "keys: Input should be a valid list"),
        ("[" * 50_000, "nests its values too deeply"),
    ]


@pytest.mark.parametrize(("text", "problem"), breakages())
def test_an_invalid_file_refuses_every_key_until_it_is_valid_again(
    key_file: Path, text: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    access = AccessControl.from_sources(key_file, env_key=ENV_KEY)
    assert not refused(access, "one") and not refused(access, ENV_KEY)

    key_file.write_text(text)
    with caplog.at_level(logging.INFO, logger="modelport.security"):
        assert not access.reload_if_changed()
        assert not access.reload_if_changed()  # reported once per change, not per poll
    assert all(refused(access, key) for key in ("one", "two", ENV_KEY))
    [line] = [record.getMessage() for record in caplog.records]
    assert f"the key file {key_file}" in line and problem in line
    assert line.endswith("every API key is refused until the file is valid again")
    assert "one" not in line.replace(str(key_file), "")  # no key value, no hash
    assert key_digest("one") not in line

    write_key_file(key_file, [entry("ops", "two")])  # repaired, with "ci" revoked
    assert access.reload_if_changed()
    assert refused(access, "one")
    assert access.policy.authenticate(bearer("two")).name == "ops"
    assert access.policy.authenticate(bearer(ENV_KEY)).name == ENV_KEY_NAME


def test_a_file_that_disappears_or_cannot_be_read_refuses_every_key(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = AccessControl.from_sources(key_file, env_key=None)
    text = key_file.read_text()
    key_file.unlink()
    with caplog.at_level(logging.ERROR, logger="modelport.security"):
        access.reload_if_changed()
    assert refused(access, "one") and refused(access, "two")
    assert f"cannot read the key file {key_file}: No such file" in caplog.text

    key_file.mkdir()  # something that is no file: reading it fails (even for root)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="modelport.security"):
        access.reload_if_changed()
    assert refused(access, "one")
    assert f"cannot read the key file {key_file}: Is a directory" in caplog.text

    key_file.rmdir()
    key_file.write_text(text)
    assert access.reload_if_changed()
    assert access.policy.authenticate(bearer("one")).name == "ci"


def test_a_keys_rate_limit_bucket_survives_a_broken_file(key_file: Path) -> None:
    """A broken edit and its repair must not hand a limited key a fresh burst."""
    limit = {"requests_per_second": 0.001, "burst": 1}
    write_key_file(key_file, [entry("ci", "one", rate_limit=limit)])
    access = AccessControl.from_sources(key_file, env_key=None)
    access.policy.authenticate(bearer("one")).admit(Scope.INFERENCE, None)  # the one token
    key_file.write_text("keys: [\n")
    access.reload_if_changed()
    write_key_file(key_file, [entry("ci", "one", rate_limit=limit)])
    assert access.reload_if_changed()
    with pytest.raises(KeyRateLimited):
        access.policy.authenticate(bearer("one")).admit(Scope.INFERENCE, None)
