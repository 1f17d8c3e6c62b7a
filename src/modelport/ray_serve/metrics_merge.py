"""One Prometheus exposition for every replica: each replica's metric families, its samples
labelled with the Serve application and replica they came from. No Ray import.

Replicas send their families (`prometheus_client` Metric objects, as their registry collects
them) every few seconds; a replica that stops sending (it died, or was scaled away) is left out
after `stale_after` seconds. Its counters then disappear with it: each series carries its
replica's label, so Prometheus sees a new replica's counters as new series, never as a reset.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

APP_LABEL = "serve_app"
REPLICA_LABEL = "serve_replica"


@dataclass(frozen=True, slots=True)
class ReplicaKey:
    app: str
    replica: str


class ReplicaMetrics:
    """The latest families of every replica that reported lately."""

    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._reports: dict[ReplicaKey, tuple[float, list[Metric]]] = {}

    def report(self, key: ReplicaKey, families: list[Metric]) -> None:
        self._reports[key] = (time.monotonic(), families)

    def forget(self, key: ReplicaKey) -> None:
        self._reports.pop(key, None)

    def replicas(self) -> list[ReplicaKey]:
        self._drop_stale()
        return sorted(self._reports, key=lambda key: (key.app, key.replica))

    def exposition(self) -> bytes:
        self._drop_stale()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(merge(self._reports.items())))
        return generate_latest(registry)

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for key, (at, _) in list(self._reports.items()):
            if now - at > self._stale_after:
                del self._reports[key]


def merge(reports: Iterable[tuple[ReplicaKey, tuple[float, list[Metric]]]]) -> list[Metric]:
    """Families of the same name become one, holding every replica's samples."""
    merged: dict[str, Metric] = {}
    for key, (_, families) in sorted(reports, key=lambda item: (item[0].app, item[0].replica)):
        extra = {APP_LABEL: key.app, REPLICA_LABEL: key.replica}
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            target.samples.extend(
                Sample(s.name, {**s.labels, **extra}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(merged.values())


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
