"""modelport through message queues against its own REST API and against a Celery worker, in
alternating rounds.

Every round measures, one after the other (the order reverses every other round):

- `rest`: modelport's v2 REST JSON at concurrency 32 (wrk, `benchmarks/wrk_post.lua`, one mlp
  row per request);
- `redis`, `rabbitmq`, `nats`: the same server process, end to end through Redis Streams,
  RabbitMQ and NATS JetStream: one asyncio process with the project's QueueClient keeps exactly
  32 requests in flight (a new request is sent as each reply is read) and times each request
  from the start of its send to the moment its reply is read;
- `celery`: what a Python team would write instead: a Celery worker (Redis broker, Redis result
  backend, prefork, concurrency 2) whose task runs the same mlp with onnxruntime (one session
  per worker process), with a client keeping 32 tasks in flight.

    python benchmarks/queues.py --tag TAG [--rounds 3] [--dur 10] [--warm 2]
        --> benchmarks/results/queues-DATE-TAG.md and .png

The brokers are real ones (tests/brokers.py: Redis, RabbitMQ and NATS with JetStream, each on
free ports in a temporary directory, stopped by PID); `bash scripts/install_test_deps.sh`
installs them. One `modelport serve --queue redis://... --queue amqp://... --queue nats://...`
serves the shared bench mlp (~/.cache/modelport-bench/models/mlp.onnx, with
`benchmarks/configs/bench-mlp.yaml`) for the whole run.

The script is also the Celery app (`celery -A queues:celery_app worker`, run from benchmarks/)
and the two load generators (`queues.py queue-load ...`, `queues.py celery-load ...`), each a
child process of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
MODELS = PEERS / "models"
MLP_CONFIG = BENCH_DIR / "configs" / "bench-mlp.yaml"
SYSTEMS = ("rest", "redis", "rabbitmq", "nats", "celery")
BROKERS = ("redis", "rabbitmq", "nats")
NAMES = {
    "rest": "modelport REST JSON (wrk)",
    "redis": "modelport via Redis Streams",
    "rabbitmq": "modelport via RabbitMQ",
    "nats": "modelport via NATS JetStream",
    "celery": "Celery worker (Redis broker + backend)",
}
SHORT = {
    "rest": "REST",
    "redis": "Redis",
    "rabbitmq": "RabbitMQ",
    "nats": "NATS",
    "celery": "Celery",
}
NATS_REPLY_STREAM = "QBENCH_REPLIES"
REPLY_PREFIX = "qbench.replies"
TARGET_REST = 0.6  # Redis >= 0.6x of REST
TARGET_CELERY = 3.0  # every broker >= 3x Celery
CELERY_CONCURRENCY = 2


def row_values() -> list[float]:
    """The shared bench mlp input: one row of 64 floats."""
    return [float(v) for v in np.load(MODELS / "mlp.input.npy").reshape(-1)]


def v2_body(row: list[float]) -> bytes:
    request = {
        "inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]
    }
    return json.dumps(request).encode()


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    if not latencies_s:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 99])
    return float(p50), float(p99)


# --------------------------------------------------------------------------------------------
# Celery: the app, the task, and (`celery-load`) the client. The worker is started as
#   cd benchmarks && QBENCH_CELERY_URL=redis://127.0.0.1:PORT/1 \
#     celery -A queues:celery_app worker --pool prefork --concurrency 2 --loglevel WARNING \
#       --without-gossip --without-mingle --without-heartbeat
# --------------------------------------------------------------------------------------------

CELERY_URL = os.environ.get("QBENCH_CELERY_URL", "redis://127.0.0.1:6379/1")
_session: Any = None


def _make_celery() -> Any:
    from celery import Celery
    from celery.signals import worker_process_init

    app = Celery("qbench", broker=CELERY_URL, backend=CELERY_URL)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @worker_process_init.connect
    def _load(**_: Any) -> None:  # once per prefork child, before its first task
        ort_session()

    @app.task(name="qbench.mlp")
    def mlp(row: list[float]) -> list[float]:
        x = np.asarray(row, dtype=np.float32).reshape(1, -1)
        return ort_session().run(None, {"input": x})[0][0].tolist()

    return app


def ort_session() -> Any:
    """The worker process's one onnxruntime session (1 thread: two processes share 2 cores)."""
    global _session
    if _session is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _session = ort.InferenceSession(
            str(MODELS / "mlp.onnx"), options, providers=["CPUExecutionProvider"]
        )
    return _session


def __getattr__(name: str) -> Any:
    """`celery_app` is made on first use, so the benchmark itself never imports Celery."""
    if name == "celery_app":
        app = _make_celery()
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)


def celery_load(args: argparse.Namespace) -> dict[str, Any]:
    """Keep args.conc tasks in flight, from one process. `then` (the default, the faster of the
    two on this machine): one thread sends with `apply_async` and is called back through
    `AsyncResult.then` while it drains the Redis result backend's pub/sub messages
    (`app.backend.result_consumer.drain_events`), sending the next task from the callback.
    `threads`: args.conc threads, each `apply_async(...).get()` in a loop."""
    app = globals()["__getattr__"]("celery_app")
    task = app.tasks["qbench.mlp"]
    row = row_values()
    expected = np.load(MODELS / "mlp.expected.npy").reshape(-1)
    start = time.perf_counter()
    warm_end, end = start + args.warm, start + args.warm + args.seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    max_err = [0.0]

    def record(t0: float, out: Any) -> float:
        t1 = time.perf_counter()
        err = float(np.max(np.abs(np.asarray(out, dtype=np.float32) - expected)))
        with lock:
            max_err[0] = max(max_err[0], err)
            if warm_end <= t1 < end:
                latencies.append(t1 - t0)
        return t1

    lost = 0
    if args.celery_client == "threads":

        def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    out = task.apply_async(args=(row,)).get(timeout=30)
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                record(t0, out)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.conc)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.warm + args.seconds + 60)
    else:
        in_flight: dict[str, float] = {}

        def launch() -> None:
            t0 = time.perf_counter()
            result = task.apply_async(args=(row,))
            in_flight[result.id] = t0
            result.then(done, on_error=failed)

        def done(result: Any) -> None:
            t0 = in_flight.pop(result.id)
            if result.successful():
                t1 = record(t0, result.result)
            else:
                errors.append(repr(result.result))
                t1 = time.perf_counter()
            if t1 < end:
                launch()

        def failed(exc: BaseException) -> None:
            errors.append(f"{type(exc).__name__}: {exc}")

        for _ in range(args.conc):
            launch()
        consumer = app.backend.result_consumer
        while in_flight and time.perf_counter() < end + args.drain:
            consumer.drain_events(timeout=0.5)
        lost = len(in_flight)
    p50, p99 = percentiles(latencies)
    return {
        "replies": len(latencies),
        "per_s": len(latencies) / args.seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": len(errors),
        "error_sample": errors[:3],
        "max_abs_err": max_err[0],
        "lost": lost,
    }


# --------------------------------------------------------------------------------------------
# `queue-load`: the project's QueueClient, args.conc requests in flight
# --------------------------------------------------------------------------------------------


async def queue_load_async(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    import orjson

    from modelport.frontends.queue.client import OutgoingRequest, client_for
    from modelport.frontends.queue.endpoint import parse_endpoint

    client = client_for(parse_endpoint(args.url))
    await client.connect()
    body = v2_body(row_values())
    expected = np.load(MODELS / "mlp.expected.npy").reshape(-1)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    send_errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    max_err = 0.0
    checked = 0

    async def send_some(count: int) -> None:
        requests = [
            OutgoingRequest(body, uuid.uuid4().hex, "mlp", None, args.reply_to)
            for _ in range(count)
        ]
        t0 = time.perf_counter()
        for request in requests:
            sent[request.request_id] = t0
        try:
            await client.send_many(requests)
        except Exception as exc:
            for request in requests:
                sent.pop(request.request_id, None)
            send_errors.append(f"{type(exc).__name__}: {exc}")
            if time.perf_counter() < end and len(send_errors) <= 100:
                await asyncio.sleep(0.1)
                spawn(count)  # keep the count in flight

    def spawn(count: int) -> None:
        task = asyncio.ensure_future(send_some(count))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    start = time.perf_counter()
    warm_end, end = start + args.warm, start + args.warm + args.seconds
    spawn(args.conc)
    while True:
        now = time.perf_counter()
        if now >= end and (not sent or now >= end + args.drain):
            break
        if len(send_errors) > 100:
            break
        more = 0
        for reply in await client.replies(args.reply_to, 4 * args.conc, 0.5):
            t1 = time.perf_counter()
            t0 = sent.pop(reply.request_id, None)
            if t0 is None:
                continue
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            if reply.status == 200 and checked < 50:
                out = orjson.loads(reply.body)["outputs"][0]["data"]
                max_err = max(max_err, float(np.max(np.abs(np.asarray(out) - expected))))
                checked += 1
            if warm_end <= t1 < end:
                latencies.append(t1 - t0)
            if t1 < end:
                more += 1
        if more:
            # the replies read together are replaced together, in one send_many
            spawn(more)
    await client.close()
    p50, p99 = percentiles(latencies)
    bad = sum(n for status, n in statuses.items() if status != 200)
    return {
        "replies": len(latencies),
        "per_s": len(latencies) / args.seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": bad + len(send_errors),
        "statuses": statuses,
        "error_sample": send_errors[:3],
        "max_abs_err": max_err,
        "lost": len(sent),
    }


def queue_load(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(queue_load_async(args))
    return uvloop.run(queue_load_async(args))


# --------------------------------------------------------------------------------------------
# The run: brokers, the server, the Celery worker, the rounds, the report
# --------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.brokers: dict[str, Any] = {}
        self.server: Any = None
        self.celery: subprocess.Popen[bytes] | None = None
        self.celery_cmd: list[str] = []
        self.body_file = work / "mlp.v2.json"
        self.brokers_desc = "redis://... --queue amqp://... --queue nats://..."
        self.redis_trimmed: list[tuple[int, int]] = []
        self.body_file.write_bytes(v2_body(row_values()))

    # -- processes ----------------------------------------------------------------------------

    def start(self) -> None:
        sys.path.insert(0, str(ROOT))
        from server_process import Server

        from tests.brokers import NatsBroker, RabbitBroker, RedisBroker

        kinds = {"redis": RedisBroker, "rabbitmq": RabbitBroker, "nats": NatsBroker}
        for name in BROKERS:
            broker = kinds[name](self.work / name)
            t0 = time.monotonic()
            self.brokers[name] = broker.start()
            if name == "redis" and self.args.redis_fsync != "always":
                import redis

                with redis.Redis.from_url(self.brokers[name].url) as admin:
                    admin.config_set("appendfsync", self.args.redis_fsync)
            print(
                f"{name} up on {broker.url} (pid {broker.pid}, {time.monotonic() - t0:.1f} s)",
                flush=True,
            )
        self._nats_reply_stream()
        repo = self.work / "repo"
        (repo / "mlp" / "1").mkdir(parents=True)
        shutil.copy(MODELS / "mlp.onnx", repo / "mlp" / "1" / "model.onnx")
        shutil.copy(MLP_CONFIG, repo / "mlp" / "config.yaml")
        queues = [a for name in BROKERS for a in ("--queue", self.brokers[name].url)]
        self.server = Server(repo, self.work / "server.log", queues)
        self.server.start()
        self.server.wait_ready(120)
        self._wait_queues()
        print(f"modelport up on {self.server.base} (pid {self.server.pid})", flush=True)
        self._start_celery()

    def _nats_reply_stream(self) -> None:
        """A stream capturing the per-measurement reply subjects, so that the server publishes
        replies with JetStream (as to the default reply subject) rather than core NATS."""
        import asyncio

        import nats
        from nats.js import api

        async def make() -> None:
            nc = await nats.connect(self.brokers["nats"].url)
            try:
                await nc.jetstream().add_stream(
                    api.StreamConfig(
                        name=NATS_REPLY_STREAM,
                        subjects=[f"{REPLY_PREFIX}.>"],
                        storage=api.StorageType.FILE,
                        max_age=3600.0,
                    )
                )
            finally:
                await nc.close()

        asyncio.run(make())

    def _wait_queues(self) -> None:
        """Until the server's log says it consumes from every broker."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.server.log.read_text(errors="replace")
            if text.count("consuming ") >= len(BROKERS):
                return
            time.sleep(0.2)
        print(
            "warning: the server log does not show every queue consuming:\n"
            + self.server.log_tail(),
            flush=True,
        )

    def celery_url(self) -> str:
        return self.brokers["redis"].url.rsplit("/", 1)[0] + "/1"

    def _start_celery(self) -> None:
        celery = Path(sys.executable).with_name("celery")
        self.celery_cmd = [
            str(celery),
            "-A",
            "queues:celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(CELERY_CONCURRENCY),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        env = dict(os.environ, QBENCH_CELERY_URL=self.celery_url())
        with (self.work / "celery.log").open("wb") as log:
            self.celery = subprocess.Popen(
                self.celery_cmd,
                cwd=BENCH_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        t0 = time.monotonic()
        ready = self._child(
            ["celery-load", "--celery-client", "then", "--drain", "120"],
            {"QBENCH_CELERY_URL": self.celery_url()},
            warm=0.0,
            seconds=1.0,
        )
        if ready.get("lost") or ready.get("errors") or not ready.get("replies"):
            raise SystemExit(
                f"the Celery worker does not answer: {ready}; log {self.work / 'celery.log'}"
            )
        print(
            f"celery worker up (pid {self.celery.pid}, {time.monotonic() - t0:.1f} s)", flush=True
        )

    def stop(self) -> None:
        if self.celery is not None:
            proc, self.celery = self.celery, None
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)  # warm shutdown
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its group: the prefork children
            proc.wait()
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
        for name in reversed(BROKERS):
            broker = self.brokers.pop(name, None)
            if broker is not None:
                broker.stop()

    # -- measurements -------------------------------------------------------------------------

    def groups(self) -> dict[str, int]:
        """The process groups whose CPU time is counted: {role: pgid} (each was started in a
        session of its own, so its PID is its PGID)."""
        found = {"server": self.server.pid, **{n: b.pid for n, b in self.brokers.items()}}
        if self.celery is not None:
            found["celery"] = self.celery.pid
        return found

    def measure(self, system: str, index: int) -> dict[str, Any]:
        load = os.getloadavg()[0]
        groups = self.groups()
        before = {role: group_cpu_s(pgid) for role, pgid in groups.items()}
        machine0, children0, wall0 = machine_busy_s(), children_cpu_s(), time.monotonic()
        if system == "rest":
            result = self._rest()
        elif system == "celery":
            result = self._child(
                ["celery-load", "--celery-client", self.args.celery_client],
                {"QBENCH_CELERY_URL": self.celery_url()},
            )
        else:
            reply_to = f"{REPLY_PREFIX}.{system}.r{index}"
            result = self._child(
                ["queue-load", "--url", self.brokers[system].url, "--reply-to", reply_to]
            )
            if result.get("lost"):
                result["leftover"] = self._leftover(system, reply_to)
            self._tidy(system, reply_to)
        wall = time.monotonic() - wall0
        cores = {role: (group_cpu_s(pgid) - before[role]) / wall for role, pgid in groups.items()}
        cores["loadgen"] = (children_cpu_s() - children0) / wall
        ours = sum(cores.values())
        cores["others"] = max(0.0, (machine_busy_s() - machine0) / wall - ours)
        result.update(system=system, round=index, load1=load, cores=cores)
        return result

    def _leftover(self, system: str, reply_to: str) -> str:
        """Where the unanswered requests are, as the broker sees it (for the report)."""
        try:
            if system == "redis":
                import redis

                client = redis.Redis.from_url(self.brokers["redis"].url)
                try:
                    pending = client.xpending("modelport.requests", "modelport")["pending"]
                    groups = client.xinfo_groups("modelport.requests")
                    lag = [g.get("lag") for g in groups]
                    return f"requests pending (read, unacked): {pending}; group lag {lag}"
                finally:
                    client.close()
            if system == "nats":
                import asyncio

                import nats

                async def look() -> str:
                    nc = await nats.connect(self.brokers["nats"].url)
                    try:
                        js = nc.jetstream()
                        info = await js.consumer_info("MODELPORT", "modelport")
                        replies = await js.stream_info(NATS_REPLY_STREAM, subjects_filter=reply_to)
                        stored = (replies.state.subjects or {}).get(reply_to, 0)
                        return (
                            f"consumer modelport: num_pending {info.num_pending}, "
                            f"num_ack_pending {info.num_ack_pending}, num_redelivered "
                            f"{info.num_redelivered}; replies stored on {reply_to}: "
                            f"{stored}"
                        )
                    finally:
                        await nc.close()

                return asyncio.run(look())
        except Exception as exc:
            return f"could not look: {type(exc).__name__}: {exc}"
        return ""

    def _rest(self) -> dict[str, Any]:
        from loadgen import Tools, wrk_point
        from rich.progress import Progress

        wrk = shutil.which("wrk")
        if wrk is None:
            raise SystemExit("wrk is not installed (bash benchmarks/setup_loadgen.sh)")
        tools = Tools(perf_analyzer=Path("/nonexistent"), perf_ld_library_path="", wrk=Path(wrk))
        url = f"{self.server.base}/v2/models/mlp/infer"
        with Progress(disable=True) as progress:
            task = progress.add_task("wrk", total=self.args.dur)
            if self.args.warm > 0:
                wrk_point(
                    tools,
                    url,
                    self.body_file,
                    self.args.conc,
                    self.args.warm,
                    log=self.work / "wrk-warm.log",
                    progress=progress,
                    task=task,
                )
            point = wrk_point(
                tools,
                url,
                self.body_file,
                self.args.conc,
                self.args.dur,
                log=self.work / "wrk.log",
                progress=progress,
                task=task,
            )
        return {
            "replies": point.requests,
            "per_s": point.inf_per_s,
            "p50_ms": point.p50_ms,
            "p99_ms": point.p99_ms,
            "errors": point.errors,
            "lost": 0,
            "command": point.raw["command"],
        }

    def _child(
        self,
        mode: list[str],
        env: dict[str, str] | None = None,
        warm: float | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        warm = self.args.warm if warm is None else warm
        seconds = self.args.dur if seconds is None else seconds
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            *mode,
            "--conc",
            str(self.args.conc),
            "--warm",
            str(warm),
            "--seconds",
            str(seconds),
        ]
        limit = warm + seconds + 180
        try:
            done = subprocess.run(
                cmd,
                cwd=BENCH_DIR,
                env=dict(os.environ, **(env or {})),
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            return {
                "replies": 0,
                "per_s": 0.0,
                "p50_ms": float("nan"),
                "p99_ms": float("nan"),
                "errors": 1,
                "lost": 0,
                "error_sample": [f"killed after {limit:.0f} s"],
            }
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("QBENCH_RESULT ")]
        if done.returncode or not lines:
            return {
                "replies": 0,
                "per_s": 0.0,
                "p50_ms": float("nan"),
                "p99_ms": float("nan"),
                "errors": 1,
                "lost": 0,
                "error_sample": [f"rc={done.returncode}: {done.stderr[-1500:]}"],
            }
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("QBENCH_RESULT "))
        result["command"] = shlex.join(cmd)
        return result

    def _tidy(self, system: str, reply_to: str) -> None:
        """After a queue measurement (every reply read): drop its reply stream, and on Redis
        trim the requests stream, which keeps every acknowledged entry otherwise (the
        transport never trims it), so that later rounds do not run on a bigger Redis."""
        if system != "redis":
            return
        import redis

        client = redis.Redis.from_url(self.brokers["redis"].url)
        try:
            deadline = time.monotonic() + 5  # the last XACKs may still be on their way
            while client.xpending("modelport.requests", "modelport")["pending"]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            else:
                length = client.xlen("modelport.requests")
                # exact: an approximate (~) trim removes at most 10,000 entries per call
                client.xtrim("modelport.requests", maxlen=0, approximate=False)
                self.redis_trimmed.append((length, client.xlen("modelport.requests")))
            client.delete(reply_to)
        finally:
            client.close()


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group pgid."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the load generators, wrk included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


SERVING = ("server", "redis", "rabbitmq", "nats", "celery")
CELERY_CLIENTS = {
    "then": "`apply_async`, then `AsyncResult.then(callback)` while one thread drains the Redis "
    "result backend's pub/sub messages (`app.backend.result_consumer.drain_events`); each "
    "callback sends the next task",
    "threads": "one thread per task in flight, each `apply_async(...).get()` in a loop",
}


def cpu_per_reply(row: dict[str, Any], roles: tuple[str, ...]) -> float:
    cores = row.get("cores", {})
    per_s = float(row["per_s"])
    return sum(cores.get(role, 0.0) for role in roles) * 1e6 / per_s if per_s else float("nan")


def span(values: list[float], digits: int = 0) -> str:
    from ab_rounds import span as ab_span

    values = [v for v in values if v == v]  # drop NaN
    return ab_span(values, digits) if values else "-"


def summary(rows: list[dict[str, Any]], system: str, key: str) -> list[float]:
    return [float(r[key]) for r in sorted(rows, key=lambda r: r["round"]) if r["system"] == system]


def ratios(rows: list[dict[str, Any]], system: str, base: str) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["system"]] = float(r["per_s"])
    return [
        v[system] / v[base] for v in by_round.values() if system in v and base in v and v[base] > 0
    ]


def report(rows: list[dict[str, Any]], args: argparse.Namespace, run: Run, took: float) -> str:
    from machine import cpu_model, git_state, versions

    vers = versions()
    worker_cmd = shlex.join(["celery", *run.celery_cmd[1:]])
    tree, after = args.git_before, git_state()
    if after != tree:  # the server runs what it imported at its start
        tree = f"{tree} when the server started ({after} when the run ended)"
    import celery
    import redis as redis_py

    lines = [
        f"# modelport through message queues vs REST vs Celery: {args.tag} "
        f"({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')} ({took / 60:.1f} min of measuring)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; server, "
        "brokers, Celery worker and load generators share the cores, and other agents' work ran "
        "on the same machine (`load1` below)",
        f"- modelport {vers['modelport']} at {tree}; python {platform.python_version()}, "
        f"onnxruntime {vers['onnxruntime']}, celery {celery.__version__}, redis-py "
        f"{redis_py.__version__}",
        f"- command: `{args.command}`",
        f"- model: the shared bench mlp (FP32 [1, 64] -> [1, 10], `{MODELS / 'mlp.onnx'}`), one "
        "row per request; modelport with `benchmarks/configs/bench-mlp.yaml` (dynamic batching "
        "up to 32, no added delay, 1 intra-op thread, 1 instance), one process: "
        f"`modelport serve --model-repository REPO --queue {run.brokers_desc}`",
        f"- {args.rounds} rounds; odd rounds run {', '.join(args.order)}, even rounds the reverse; "
        f"every measurement: {args.warm:g} s warm-up, then {args.dur:g} s at {args.conc} in "
        "flight",
        "- brokers: `tests/brokers.py` as the e2e tests run them (Redis with "
        f"`--appendonly yes --appendfsync {args.redis_fsync}`, RabbitMQ durable queues with "
        "persistent messages and publisher confirms, NATS JetStream with file storage), one of "
        "each for the whole run; Celery uses database 1 of the same Redis",
        "",
        "How each is measured:",
        "",
        f"- REST: wrk, {min(2, args.conc)} threads, {args.conc} connections, "
        "`benchmarks/wrk_post.lua` posting one v2 JSON body to `/v2/models/mlp/infer`.",
        f"- Redis / RabbitMQ / NATS: one asyncio process (uvloop) with the project's "
        f"QueueClient (`client_for(endpoint)`): {args.conc} requests are sent at the start and a "
        "new one as each reply is read, so exactly 32 are in flight; latency = from the start "
        "of `send()` to the moment `replies()` returned the reply; each measurement has its own "
        f"reply destination (`{REPLY_PREFIX}.BROKER.rN`; on NATS a file-storage stream "
        f"{NATS_REPLY_STREAM} captures those subjects, so replies are JetStream publishes as to "
        "the default reply subject). Replies are checked against onnxruntime.",
        f"- Celery: worker command (cwd `benchmarks/`, env `QBENCH_CELERY_URL=redis://"
        f"127.0.0.1:PORT/1` for broker and result backend): `{worker_cmd}`; the task "
        "(`qbench.mlp`, JSON serializer, default settings otherwise: prefetch multiplier 4, "
        "early acks) runs one onnxruntime session per worker process, made at "
        "`worker_process_init` (intra/inter-op threads 1), on the row sent as a list of 64 "
        f"floats. Client ({CELERY_CLIENTS[args.celery_client]}): one process keeps "
        f"{args.conc} tasks in flight; latency = `apply_async` to the result in hand.",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| system | replies/s | p50 ms | p99 ms | vs REST | vs Celery | CPU us/reply: serving "
        "side | load generator |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in SYSTEMS:
        if not summary(rows, system, "per_s"):
            continue
        vs_rest = span(ratios(rows, system, "rest"), 2) if system != "rest" else "1"
        vs_celery = span(ratios(rows, system, "celery"), 2) if system != "celery" else "1"
        serving = [cpu_per_reply(r, SERVING) for r in rows if r["system"] == system]
        loadgen = [cpu_per_reply(r, ("loadgen",)) for r in rows if r["system"] == system]
        lines.append(
            f"| {NAMES[system]} | {span(summary(rows, system, 'per_s'))} | "
            f"{span(summary(rows, system, 'p50_ms'), 2)} | "
            f"{span(summary(rows, system, 'p99_ms'), 2)} | {vs_rest} | {vs_celery} | "
            f"{span(serving)} | {span(loadgen)} |"
        )
    lines += [
        "",
        "CPU us/reply = CPU time per reply over the measurement (warm-up included): serving "
        "side = modelport server + brokers + Celery worker (all of their processes); load "
        "generator = wrk, the QueueClient process or the Celery client. With 2 cores shared by "
        "both, a cheaper load generator leaves more CPU to the server.",
    ]
    lines += ["", "## Targets", ""]
    redis_rest = ratios(rows, "redis", "rest")
    lines.append(target_line("Redis Streams vs REST", redis_rest, TARGET_REST))
    for broker in BROKERS:
        lines.append(
            target_line(f"{SHORT[broker]} vs Celery", ratios(rows, broker, "celery"), TARGET_CELERY)
        )
    lines += [
        "",
        "## Every round",
        "",
        "Cores used during the measurement (warm-up included): `srv` modelport server, `redis`/"
        "`rmq`/`nats` the brokers, `cw` the Celery worker, `lg` the load generator, `oth` "
        "everything else on the machine (other agents, this script).",
        "",
        "| round | system | replies/s | p50 ms | p99 ms | errors | unanswered | srv | redis | "
        "rmq | nats | cw | lg | oth |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["round"], SYSTEMS.index(r["system"]))):
        c = r.get("cores", {})
        used = " | ".join(
            f"{c.get(k, 0.0):.2f}"
            for k in ("server", "redis", "rabbitmq", "nats", "celery", "loadgen", "others")
        )
        lines.append(
            f"| {r['round']} | {SHORT[r['system']]} | {r['per_s']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r.get('errors', 0)} | {r.get('lost', 0)} | {used} |"
        )
    errs = [r for r in rows if r.get("errors") or r.get("lost")]
    worst = max((float(r.get("max_abs_err", 0.0)) for r in rows), default=0.0)
    lines += ["", f"Largest difference of a checked output from onnxruntime: {worst:.2e}."]
    if errs:
        lines += ["", "Errors:", ""]
        lines += [
            f"- round {r['round']} {r['system']}: {r.get('errors')} errors, "
            f"{r.get('lost')} unanswered; {r.get('error_sample') or r.get('statuses')}"
            + (f"; {r['leftover']}" if r.get("leftover") else "")
            for r in errs
        ]
    if run.redis_trimmed:
        held = ", ".join(f"{before:,}" for before, _ in run.redis_trimmed)
        left = ", ".join(f"{after:,}" for _, after in run.redis_trimmed)
        lines += [
            "",
            f"After each Redis measurement the requests stream held {held} entries, all "
            "acknowledged: the transport XACKs but never trims or deletes them, so the stream "
            "(and the append-only file) grows by every request body served. The benchmark "
            f"trimmed it (exact XTRIM MAXLEN 0) between measurements, to {left} entries.",
        ]
    return "\n".join(lines) + "\n"


def target_line(what: str, values: list[float], target: float) -> str:
    if not values:
        return f"- {what}: no complete round"
    mid = statistics.median(values)
    met = "met" if mid >= target else "NOT met"
    every = " (in every round)" if min(values) >= target else ""
    return f"- {what} >= {target:g}x: **{met}**{every if mid >= target else ''}: {span(values, 2)}"


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    palette = dict(
        zip(SYSTEMS, ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#8c8c8c"], strict=True)
    )
    shown = [s for s in SYSTEMS if summary(rows, s, "per_s")]
    for axis, (key, label) in zip(
        axes, (("per_s", "replies/s"), ("p99_ms", "p99 latency (ms)")), strict=True
    ):
        mids, lows, highs = [], [], []
        for system in shown:
            values = [v for v in summary(rows, system, key) if v == v] or [0.0]
            mid = statistics.median(values)
            mids.append(mid)
            lows.append(mid - min(values))
            highs.append(max(values) - mid)
        bars = axis.bar(
            range(len(shown)),
            mids,
            0.6,
            yerr=[lows, highs],
            capsize=4,
            color=[palette[s] for s in shown],
        )
        axis.bar_label(bars, fmt="%.0f" if key == "per_s" else "%.1f", fontsize=8, padding=2)
        axis.set_xticks(range(len(shown)))
        axis.set_xticklabels([SHORT[s] for s in shown], fontsize=9)
        axis.set_title(f"mlp, {args.conc} in flight: {label}", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        if key != "per_s":
            continue
        for base, factor, style, what in (
            ("rest", TARGET_REST, "--", "Redis target"),
            ("celery", TARGET_CELERY, ":", "broker target"),
        ):
            values = summary(rows, base, "per_s")
            if values:
                level = factor * statistics.median(values)
                axis.axhline(
                    level,
                    color="black",
                    linestyle=style,
                    linewidth=1,
                    label=f"{what}: {factor:g}x {SHORT[base]} = {level:,.0f}/s",
                )
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(
        f"modelport REST vs through Redis Streams / RabbitMQ / NATS JetStream vs a Celery worker "
        f"({args.tag}): median of {args.rounds} alternating rounds, bars = min-max",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dur", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warm", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--celery-client",
        choices=("then", "threads"),
        default="then",
        help="how the Celery client waits for results (see celery_load)",
    )
    parser.add_argument(
        "--redis-fsync",
        choices=("always", "everysec"),
        default="always",
        help="Redis's appendfsync: always (as the tests run it: every write on disk before the "
        "reply) or everysec (Redis's own default for the append-only file)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--stem", default="", help="result file name (default queues-DATE-TAG)")
    args = parser.parse_args()
    args.command = "python benchmarks/queues.py " + shlex.join(sys.argv[1:])
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    args.order = systems
    for path in (MODELS / "mlp.onnx", MODELS / "mlp.input.npy", MODELS / "mlp.expected.npy"):
        if not path.exists():
            raise SystemExit(f"{path} is missing (the shared bench models: ../shared/bench)")
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="qbench-"))
    run = Run(args, work)
    from machine import git_state

    args.git_before = git_state()
    started = time.time()
    try:
        run.start()
        for index in range(1, args.rounds + 1):
            order = systems if index % 2 else systems[::-1]
            for system in order:
                result = run.measure(system, index)
                rows.append(result)
                print(
                    f"round {index}/{args.rounds} {system:8} {result['per_s']:8,.0f}/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                    f"errors {result.get('errors', 0)}  unanswered {result.get('lost', 0)}  "
                    f"load1 {result['load1']:.2f}",
                    flush=True,
                )
                if result.get("error_sample"):
                    print(f"  {result['error_sample']}", flush=True)
    finally:
        took = time.time() - started
        run.stop()
    stem = args.stem or f"queues-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, run, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args, args.out / f"{stem}.png")
    print(text)
    print(f"logs and rows: {work}")


def child_main(mode: str) -> None:
    parser = argparse.ArgumentParser(prog=f"queues.py {mode}")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--url", default="")
    parser.add_argument("--reply-to", default="")
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--celery-client", choices=("then", "threads"), default="then")
    args = parser.parse_args(sys.argv[2:])
    result = queue_load(args) if mode == "queue-load" else celery_load(args)
    print("QBENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("queue-load", "celery-load"):
        child_main(sys.argv[1])
    else:
        main()
