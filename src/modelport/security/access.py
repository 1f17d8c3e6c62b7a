"""What the frontends hold: whether keys are on, the current key policy, and the reporting.

The policy is replaced, never changed, when the key file changes (`watch`, a task on the
server's loop started by app.py): a request holds the policy it started with.

A file that turns unreadable or invalid fails closed: every key is refused (401), the
MODELPORT_API_KEY one too, until the file is valid again, reported once per change of the
file. Keeping the keys read before would keep a key in force that the broken edit meant to
revoke, and a partial set of keys is no state anyone configured.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from modelport.security.audit import AccessObserver, AuditLog
from modelport.security.keys import FileStamp, KeyFileError, file_stamp, read_key_file
from modelport.security.policy import AccessRefusal, KeyPolicy, build_policy

log = logging.getLogger("modelport.security")

POLL_SECS = 1.0
REFUSE_EVERY_KEY = KeyPolicy(())
"""The policy while the key file cannot be used: every key is unknown (401)."""


class AccessControl:
    """`enabled`: keys are configured (a key file, MODELPORT_API_KEY or both). When they are
    not, frontends check nothing and only audit management actions."""

    def __init__(
        self,
        policy: KeyPolicy | None,
        *,
        protect_health: bool = False,
        observer: AccessObserver | None = None,
        key_file: Path | None = None,
        env_key: str | None = None,
    ) -> None:
        self.enabled = policy is not None
        self.policy = policy if policy is not None else KeyPolicy(())
        self.protect_health = protect_health
        self.audit = AuditLog(observer)
        self._key_file = key_file
        self._env_key = env_key
        self._stamp: FileStamp | None = None if key_file is None else file_stamp(key_file)
        self._valid = self.policy
        """The last policy read from a valid file: keys keep their buckets across a failure."""

    @classmethod
    def from_sources(
        cls,
        key_file: Path | None,
        env_key: str | None,
        *,
        protect_health: bool = False,
        observer: AccessObserver | None = None,
    ) -> AccessControl:
        """Keys from the file and the MODELPORT_API_KEY value; raises KeyFileError."""
        if key_file is None and not env_key:
            return cls(None, protect_health=protect_health, observer=observer)
        access = cls(
            None,
            protect_health=protect_health,
            observer=observer,
            key_file=key_file,
            env_key=env_key,
        )
        entries = read_key_file(key_file) if key_file is not None else []
        access.policy = access._valid = build_policy(entries, env_key)
        access.enabled = True
        return access

    def summary(self) -> str:
        if not self.enabled:
            return "API keys: none configured; every request is let through"
        where = f" (key file {self._key_file})" if self._key_file is not None else ""
        health = "needs a key" if self.protect_health else "is open"
        return f"API keys: {len(self.policy.principals)}{where}; health {health}"

    def refused(self, error: AccessRefusal, client: str) -> None:
        """Audit and count a refusal (the frontend answers it)."""
        self.audit.refused(error, client)

    def reload_if_changed(self) -> bool:
        """Read the key file again if its stamp changed; True when new keys took effect (a
        file that cannot be used refuses every key, and is not such a change)."""
        path = self._key_file
        if path is None:
            return False
        stamp = file_stamp(path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            entries = read_key_file(path)
        except KeyFileError as exc:
            problem = str(exc)  # names the file and the entry, never a key or a hash
        except Exception as exc:  # a watcher that died would leave the keys in force
            problem = f"the key file {path} could not be read: {type(exc).__name__}"
        else:
            self.policy = self._valid = build_policy(entries, self._env_key, self._valid)
            log.info("read the key file %s again: %d key(s)", path, len(entries))
            return True
        self.policy = REFUSE_EVERY_KEY
        log.error("%s; every API key is refused until the file is valid again", problem)
        return False

    async def watch(self, interval: float = POLL_SECS) -> None:
        """Follow the key file until cancelled; returns at once when there is none."""
        if self._key_file is None:
            return
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
