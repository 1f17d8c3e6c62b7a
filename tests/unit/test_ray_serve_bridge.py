"""The Ray-free pieces a replica and the front are made of: the ASGI bridge, the front's routes
and the metrics merge, driven in process with small Starlette apps and real prometheus_client
registries. (modelport's own app meets Ray in tests/e2e/test_ray_serve.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelport.ray_serve.asgi_bridge import (
    ForwardedRequest,
    ForwardedResponse,
    LoadedFirst,
    at_full_path,
    call_app,
    only_under,
)
from modelport.ray_serve.front import Front
from modelport.ray_serve.metrics_merge import ReplicaKey, ReplicaMetrics


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {"path": request.url.path, "query": request.url.query, "body": body.decode()},
        status_code=201,
        headers={"x-echo": request.headers.get("x-in", "")},
    )


def echo_app() -> Starlette:
    return Starlette(routes=[Route("/{rest:path}", echo, methods=["GET", "POST"])])


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_forwarded_request_is_answered_whole() -> None:
    request = ForwardedRequest(
        "POST", "/v1/models/m:predict", b"a=1", [(b"x-in", b"yes")], b'{"x": 1}'
    )
    answer = run(call_app(echo_app(), request))
    assert answer.status == 201
    assert (b"x-echo", b"yes") in answer.headers
    assert orjson.loads(answer.body) == {
        "path": "/v1/models/m:predict",
        "query": "a=1",
        "body": '{"x": 1}',
    }


def test_ray_root_path_is_undone_and_other_paths_refused() -> None:
    """Ray mounts an application at its route prefix (root_path); modelport routes on the
    whole path, and a replica answers nothing outside its prefix."""
    app = only_under(at_full_path(echo_app()), ("/v2/models/m",))

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, root_path="/v2/models/m")
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            inside = await client.get("/v2/models/m/ready")
            other = await client.get("/v2/models/mm/ready")
            control = await client.post("/v2/repository/models/m/load")
        return inside, other, control

    inside, other, control = run(scenario())
    assert inside.status_code == 201 and inside.json()["path"] == "/v2/models/m/ready"
    assert other.status_code == 404 and control.status_code == 404
    assert "no route" in control.json()["error"]


def test_startup_waits_for_the_load_and_extra_work() -> None:
    events: list[str] = []
    loaded = {"done": False}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("inner started")

        async def load() -> None:
            await asyncio.sleep(0.2)
            events.append("loaded")
            loaded["done"] = True

        task = asyncio.create_task(load())
        yield
        await task
        events.append("inner stopped")

    inner = Starlette(lifespan=lifespan)

    async def also() -> None:
        events.append("also")

    async def stop_also() -> None:
        events.append("stop also")

    wrapper = LoadedFirst(echo_app(), inner, lambda: loaded["done"], also, stop_also)

    async def scenario() -> None:
        incoming: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        outgoing: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        task = asyncio.create_task(
            wrapper({"type": "lifespan"}, incoming.get, outgoing.put)  # type: ignore[arg-type]
        )
        await incoming.put({"type": "lifespan.startup"})
        assert (await outgoing.get())["type"] == "lifespan.startup.complete"
        events.append("startup complete")
        await incoming.put({"type": "lifespan.shutdown"})
        assert (await outgoing.get())["type"] == "lifespan.shutdown.complete"
        await task

    run(scenario())
    assert events == [
        "inner started",
        "loaded",
        "also",
        "startup complete",
        "stop also",
        "inner stopped",
    ]


class AppLink:
    """A model's deployment reached in process: the front's link over `call_app`."""

    def __init__(self, name: str, ready: bool = True) -> None:
        self.name = name
        self._ready = ready
        self.app = echo_app()

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        return await call_app(self.app, request)

    async def ready(self, strict: bool) -> bool:
        return self._ready

    async def index_rows(self, ready_only: bool) -> list[dict[str, Any]]:
        return [{"name": self.name, "version": v, "state": "READY", "reason": ""} for v in "21"]

    async def statistics(self) -> list[dict[str, Any]]:
        return [{"name": self.name, "version": "1", "inference_count": 3}]


def front_client(links: dict[str, AppLink]) -> httpx.AsyncClient:
    async def metrics() -> bytes:
        return b"# merged\n"

    fallback = Starlette(
        routes=[
            Route(
                "/{rest:path}",
                lambda r: JSONResponse({"fallback": r.url.path}),
                methods=["GET", "POST"],
            )
        ]
    )
    front = Front(links, fallback, metrics, max_request_bytes=1024, strict_readiness=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://front")


def test_the_front_gathers_passes_on_and_refuses() -> None:
    async def scenario() -> dict[str, httpx.Response]:
        links = {"b": AppLink("b"), "a": AppLink("a")}
        async with front_client(links) as client:
            return {
                "ready": await client.get("/v2/health/ready"),
                "index": await client.post("/v2/repository/index", json={"ready": True}),
                "stats": await client.get("/v2/models/stats"),
                "tf": await client.post("/v1/models/a:predict", content=b"{}"),
                "tf_version": await client.get("/v1/models/b/versions/1/metadata"),
                "v2": await client.get("/v2/models/a/ready"),
                "unknown": await client.get("/v2/models/zzz/ready"),
                "tf_unknown": await client.post("/v1/models/zzz:predict"),
                "load": await client.post("/v2/repository/models/a/load"),
                "metrics": await client.get("/metrics"),
                "too_large": await client.post("/v1/models/a:predict", content=b"x" * 2000),
            }

    got = run(scenario())
    assert got["ready"].json() == {"ready": True}
    assert [(r["name"], r["version"]) for r in got["index"].json()] == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("b", "2"),
    ]
    assert [s["name"] for s in got["stats"].json()["model_stats"]] == ["a", "b"]
    assert got["tf"].status_code == 201 and got["tf"].json()["path"] == "/v1/models/a:predict"
    assert got["tf_version"].json()["path"] == "/v1/models/b/versions/1/metadata"
    assert got["v2"].json()["path"] == "/v2/models/a/ready"
    assert got["unknown"].json() == {"fallback": "/v2/models/zzz/ready"}
    assert got["tf_unknown"].json() == {"fallback": "/v1/models/zzz:predict"}
    assert got["load"].status_code == 400 and "Ray Serve" in got["load"].json()["error"]
    assert got["metrics"].text == "# merged\n"
    assert got["too_large"].status_code == 413


def test_the_front_is_not_ready_while_a_model_is_not() -> None:
    async def scenario() -> httpx.Response:
        async with front_client({"a": AppLink("a"), "b": AppLink("b", ready=False)}) as client:
            return await client.get("/v2/health/ready")

    answer = run(scenario())
    assert answer.status_code == 400 and answer.json()["ready"] is False


def test_every_replica_in_one_exposition_labelled() -> None:
    replicas = ReplicaMetrics(stale_after=60)
    for replica, count in (("r1", 2), ("r2", 5)):
        registry = CollectorRegistry()
        requests = Counter("modelport_x", "requests", ["model"], registry=registry)
        requests.labels("m").inc(count)
        latency = Histogram("modelport_seconds", "latency", registry=registry, buckets=(1.0,))
        latency.observe(0.5)
        replicas.report(ReplicaKey("app", replica), list(registry.collect()))
    text = replicas.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    totals = {
        s.labels["serve_replica"]: s.value
        for s in families["modelport_x"].samples
        if s.name == "modelport_x_total"
    }
    assert totals == {"r1": 2.0, "r2": 5.0}
    assert families["modelport_seconds"].type == "histogram"
    assert text.count("# TYPE modelport_x_total counter") == 1
    replicas.forget(ReplicaKey("app", "r1"))
    assert replicas.replicas() == [ReplicaKey("app", "r2")]


def test_a_replica_that_stops_reporting_is_dropped() -> None:
    replicas = ReplicaMetrics(stale_after=0.05)
    replicas.report(ReplicaKey("app", "gone"), [])
    assert replicas.replicas() == [ReplicaKey("app", "gone")]
    asyncio.run(asyncio.sleep(0.1))
    assert replicas.replicas() == []
