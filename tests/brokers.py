"""Real message brokers for the tests: Redis, RabbitMQ and NATS JetStream, each a child process
on free 127.0.0.1 ports with its data and logs in a directory of its own.

Every broker runs in a session (and so a process group) of its own, started with
`start_new_session=True`, so that its PID is also its PGID: stop() sends SIGTERM to that PID,
waits a grace period, then SIGKILLs the whole group; kill() SIGKILLs the group at once. Every
process is also started with MODELPORT_TEST_BROKER=<tag> in its environment, a tag unique to the
broker object, and what still carries it after the group is gone (a daemon that left the group
with setsid, as `epmd -daemon` does) is SIGKILLed too. Both end only what this module started.

restart() keeps the port and the data directory: Redis writes an append-only file with
`appendfsync always`, RabbitMQ keeps its node name and mnesia directory, NATS its JetStream
store_dir. Readiness is a real request with the broker's client library, polled until it answers.

Linux only (the survivor checks read /proc).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import aio_pika
import nats
import redis

from tests.support import free_port

T = TypeVar("T")

MARKER = "MODELPORT_TEST_BROKER"
# Where the Debian packages put the binaries; /usr/sbin is not on a non-root user's PATH.
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "bash scripts/install_test_deps.sh"


class BrokerNotInstalledError(RuntimeError):
    """The broker's binary is not on this machine."""


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message names its log file."""


def find_binary(name: str, *candidates: str) -> str | None:
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name) or shutil.which(name, path=SEARCH_PATH)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[2])


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group `pgid`."""
    return [
        pid
        for pid in _pids()
        if (stat := _stat(pid)) is not None and stat[1] == pgid and stat[0] not in "ZX"
    ]


def marked_processes(tag: str) -> list[int]:
    """The live processes started with MARKER=tag in their environment, wherever they are now."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        stat = _stat(pid)
        if stat is not None and stat[0] not in "ZX" and needle in environ.split(b"\0"):
            found.append(pid)
    return found


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a thread of its own, so that it works from inside a
    running event loop (an async test) as well as from plain code."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Broker:
    """One broker: a child process (or a few, each in its own group) and a data directory."""

    name: ClassVar[str]
    package: ClassVar[str]  # the Debian package that has the binary
    ready_timeout: ClassVar[float] = 15.0
    stop_grace: ClassVar[float] = 10.0

    _live: ClassVar[weakref.WeakSet[Broker]] = weakref.WeakSet()

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.tag = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self.log = directory / f"{self.name}.log"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._pgids: set[int] = set()  # every group this object started, for survivors()
        self.boot_seconds: float | None = None  # from the last start() to its first answer

    # -- what each broker defines -------------------------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    def binary(self) -> str:
        raise NotImplementedError

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def check(self) -> None:
        """One readiness probe with the client library; raises while the broker does not answer."""
        raise NotImplementedError

    def logs(self) -> list[Path]:
        return [self.log]

    def _prepare(self) -> None:
        """Before the main process starts (config files; RabbitMQ's epmd)."""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._processes) and self._processes[-1].poll() is None

    @property
    def pid(self) -> int:
        """The main process; its PGID is the same number."""
        if not self._processes:
            raise RuntimeError(f"{self.name} is not started")
        return self._processes[-1].pid

    def start(self) -> Self:
        if self._processes:
            raise RuntimeError(f"{self.name} is already started (pid {self.pid})")
        binary = self.binary()  # raises BrokerNotInstalledError first, before anything starts
        try:
            self._prepare()
            self._spawn(self.command(binary), self.log)
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        Broker._live.add(self)
        return self

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to each process (newest first), SIGKILL to its group after `grace` seconds, and
        wait until nothing this broker started is left. A no-op if it is not running."""
        grace = self.stop_grace if grace is None else grace
        while self._processes:
            process = self._processes.pop()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace)
            self._end_group(process)
        self._end_marked()
        Broker._live.discard(self)

    def kill(self) -> None:
        """SIGKILL every process group at once (a crash: nothing gets to shut down cleanly)."""
        while self._processes:
            self._end_group(self._processes.pop())
        self._end_marked()
        Broker._live.discard(self)

    def restart(self, grace: float | None = None) -> Self:
        """stop() then start(), on the same port and the same data directory."""
        self.stop(grace)
        return self.start()

    def survivors(self) -> list[int]:
        """The live processes this broker started, in any of its groups or marked with its tag;
        empty after stop() and kill()."""
        pids = set(marked_processes(self.tag))
        for pgid in self._pgids:
            pids.update(group_members(pgid))
        return sorted(pids)

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for log in self.logs():
            with contextlib.suppress(OSError):
                parts.append(f"--- {log} ---\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # -- helpers --------------------------------------------------------------------------------

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        environment = {**os.environ, **self.environment(), MARKER: self.tag}
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.directory,
                start_new_session=True,  # its own session and group: PGID == PID
            )
        self._processes.append(process)
        self._pgids.add(process.pid)
        return process

    def _wait_ready(self) -> None:
        process = self._processes[-1]
        start = time.monotonic()
        deadline = start + self.ready_timeout
        last_error: BaseException | None = None
        while True:
            if process.poll() is not None:
                raise BrokerStartError(
                    f"{self.name} exited with status {process.returncode} before it answered on "
                    f"{self.url}; its log: {', '.join(map(str, self.logs()))}\n{self.log_tail()}"
                )
            try:
                # Until the port accepts, a client would only log connection tracebacks (and
                # nats-py waits its reconnect interval, 2 s, before it gives up).
                if not _accepts(self.port):
                    raise ConnectionRefusedError(f"nothing listens on 127.0.0.1:{self.port} yet")
                self.check()
            except Exception as error:
                last_error = error
            else:
                self.boot_seconds = time.monotonic() - start
                return
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"{self.name} did not answer on {self.url} within {self.ready_timeout:g}s "
                    f"(last error: {last_error!r}); its log: "
                    f"{', '.join(map(str, self.logs()))}\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _end_group(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL what is left of the process's group and wait until it is all gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._wait_gone(lambda: group_members(process.pid), f"process group {process.pid}")

    def _end_marked(self) -> None:
        """SIGKILL whatever carries this broker's tag but left its group (a daemon)."""
        for pid in marked_processes(self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(lambda: marked_processes(self.tag), f"processes tagged {self.tag}")

    def _wait_gone(
        self, members: Callable[[], list[int]], what: str, timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while left := members():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {what} still has {left} after SIGKILL")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def _not_installed(self, binary: str) -> BrokerNotInstalledError:
        return BrokerNotInstalledError(
            f"{binary} not found: install the Debian package {self.package} "
            f"(`{INSTALL_HINT}` installs every broker the tests need)"
        )


class RedisBroker(Broker):
    name = "redis"
    package = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def binary(self) -> str:
        found = find_binary("redis-server")
        if found is None:
            raise self._not_installed("redis-server")
        return found

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]

    def check(self) -> None:
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            client.ping()  # BusyLoadingError while it reads the append-only file back
        finally:
            client.close()


class NatsBroker(Broker):
    name = "nats"
    package = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    def binary(self) -> str:
        found = find_binary("nats-server")
        if found is None:
            raise self._not_installed("nats-server")
        return found

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            self.tag,  # the same name across restarts
            "-js",
            "-sd",
            str(self.store_dir),
        ]

    def check(self) -> None:
        _run(self._check())

    async def _check(self) -> None:
        client = await nats.connect(
            self.url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
        )
        try:
            await client.jetstream().account_info()  # JetStream itself is up, not only the port
        finally:
            await client.close()


class RabbitBroker(Broker):
    """rabbitmq-server with its own node name, epmd port, distribution port, config, plugins
    file, mnesia and log directories, and HOME (for the Erlang cookie), all in `directory`.

    It runs the upstream start script (/usr/lib/rabbitmq/bin/rabbitmq-server) directly: Debian's
    /usr/sbin/rabbitmq-server wrapper `su`s to the rabbitmq user when run as root, which resets
    HOME and needs the directory to belong to that user. The script runs beam.smp as its child and
    turns SIGTERM into a clean shutdown. epmd is started first, in the foreground in a group of its
    own on a port of its own, and beam.smp is told not to start one (a daemon epmd would leave the
    group with setsid); stop() ends RabbitMQ's group, then epmd's.
    """

    name = "rabbitmq"
    package = "rabbitmq-server"
    ready_timeout = 60.0
    stop_grace = 30.0

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"rabbit-{uuid.uuid4().hex[:10]}@localhost"
        self.mnesia_base = directory / "mnesia"
        self.log_base = directory / "log"
        self.epmd_log = directory / "epmd.log"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def logs(self) -> list[Path]:
        return [self.log, self.log_base / f"{self.node}.log", self.epmd_log]

    def binary(self) -> str:
        found = find_binary("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server")
        if found is None:
            raise self._not_installed("rabbitmq-server")
        if find_binary("epmd", "/usr/lib/erlang/bin/epmd") is None:
            raise BrokerNotInstalledError(
                f"epmd not found: install the Debian package erlang-base ({INSTALL_HINT})"
            )
        return found

    def command(self, binary: str) -> list[str]:
        return [binary]

    def environment(self) -> dict[str, str]:
        return {
            "HOME": str(self.directory),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.mnesia_base),
            "RABBITMQ_LOG_BASE": str(self.log_base),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
            # epmd is ours, started before; never let beam.smp start a daemon one
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        }

    def _prepare(self) -> None:
        self.mnesia_base.mkdir(exist_ok=True)
        self.log_base.mkdir(exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")  # no plugins: a faster boot
        (self.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        (self.directory / "rabbitmq.conf").write_text(
            "loopback_users.guest = true\n"  # guest from 127.0.0.1 only (the default, said here)
            "disk_free_limit.absolute = 1MB\n"  # a small CI disk must not block publishers
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.directory / "advanced.config").write_text(
            "[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n"
        )
        epmd = find_binary("epmd", "/usr/lib/erlang/bin/epmd")
        assert epmd is not None  # binary() checked
        process = self._spawn(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"], self.epmd_log
        )
        deadline = time.monotonic() + 10
        while not _accepts(self.epmd_port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BrokerStartError(
                    f"epmd for {self.name} did not listen on 127.0.0.1:{self.epmd_port}; "
                    f"its log: {self.epmd_log}\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def check(self) -> None:
        _run(self._check())

    async def _check(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=2)
        await connection.close()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@atexit.register
def _kill_leftovers() -> None:
    """A test run that ends without its fixtures' teardown still leaves no broker behind."""
    for broker in list(Broker._live):
        broker.kill()
