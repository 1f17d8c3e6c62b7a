"""`modelport ray serve`: start (or join) Ray, deploy the plan's applications, serve until
SIGINT/SIGTERM, then shut Serve down.

The ingress (Ray's Python proxy or HAProxy) is chosen by environment variables that Ray reads
when its modules are imported: `options.ingress_environment`, set by the command line before
this module is imported.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray
from ray import serve

from modelport.ray_serve import builders
from modelport.ray_serve.options import Ingress
from modelport.ray_serve.plan import FRONT_BUILDER, AppSpec

log = logging.getLogger("modelport.ray_serve")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    address: str | None = None
    """A running Ray to join ("auto", or host:port); None starts a local one."""
    num_cpus: int | None = None
    """CPUs of a local Ray (None: all of this machine's)."""
    ingress: Ingress = "proxy"


def serve_until_stopped(apps: list[AppSpec], host: str, port: int, cluster: ClusterOptions) -> None:
    with running_ray(cluster):
        serve.start(http_options={"host": host, "port": port})
        _warn_if_short_of_cpus(apps)
        deploy(apps)  # a signal until here ends the command as Ray's handlers do
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        log.info(
            "serving %d model(s) on Ray Serve at http://%s:%d (%s ingress)",
            len(apps) - 1,
            host,
            port,
            cluster.ingress,
        )
        stopping.wait()
        log.info("stopping: shutting Serve down")
        serve.shutdown()  # type: ignore[no-untyped-call]


def deploy(apps: list[AppSpec]) -> None:
    """Deploy every application at once and wait until all run."""
    targets = []
    for app in apps:
        build = builders.front_app if app.import_path == FRONT_BUILDER else builders.model_app
        targets.append(
            serve.RunTarget(build(app.args), name=app.name, route_prefix=app.route_prefix)
        )
    serve.run_many(targets)


@contextmanager
def running_ray(cluster: ClusterOptions) -> Iterator[None]:
    if cluster.address is not None:
        ray.init(address=cluster.address, log_to_driver=False)
    else:
        ray.init(num_cpus=cluster.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _warn_if_short_of_cpus(apps: list[AppSpec]) -> None:
    """Serve waits, saying little, for replicas that no node has the CPUs for."""
    wanted = 0.0
    for app in apps[1:]:
        options = app.args.get("options", {})
        autoscaling = options.get("autoscaling_config") or {}
        count = options.get("num_replicas")
        replicas = autoscaling.get("min_replicas", 1) if autoscaling else count
        cpus = (options.get("ray_actor_options") or {}).get("num_cpus", 1)
        wanted += float(cpus) * (replicas if isinstance(replicas, int) else 1)
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    available = float(resources.get("CPU", 0))
    if wanted > available:
        log.warning(
            "the models' replicas ask for %g CPUs and Ray has %g: some will wait to be "
            "scheduled. Give fewer replicas, or less CPU per replica in --ray-options "
            "(default: {ray_actor_options: {num_cpus: 0.5}}), or more --num-cpus",
            wanted,
            available,
        )
