"""`modelport k8s`'s output: the KServe and the plain Kubernetes sets, as YAML files in one
folder per set (so `kubectl apply -f DIR/kubernetes` applies one of them) or as one stream."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from modelport.deploy import kserve, kubernetes
from modelport.deploy.manifest_options import ManifestOptions, Target
from modelport.deploy.pod import Manifest
from modelport.deploy.repository_needs import RepositoryNeeds


def manifest_sets(
    options: ManifestOptions, needs: RepositoryNeeds, target: Target = "all"
) -> dict[str, dict[str, Manifest]]:
    """Folder -> file name -> manifest."""
    sets: dict[str, dict[str, Manifest]] = {}
    if target in ("all", "kserve"):
        sets["kserve"] = kserve.manifests(options, needs)
    if target in ("all", "kubernetes"):
        sets["kubernetes"] = kubernetes.manifests(options)
    return sets


def render(documents: Iterable[Manifest], header: str = "") -> str:
    """Documents as one YAML stream, each after `---`."""
    parts = [header] if header else []
    for document in documents:
        parts.append("---\n" + yaml.safe_dump(document, sort_keys=False, width=100))
    return "".join(parts)


def stream(sets: dict[str, dict[str, Manifest]], header: str = "") -> str:
    """Every manifest once (both sets share the settings ConfigMap)."""
    seen: dict[tuple[str, str], Manifest] = {}
    for files in sets.values():
        for document in files.values():
            key = (document["kind"], document["metadata"]["name"])
            seen.setdefault(key, document)
    return render(seen.values(), header)


def write(sets: dict[str, dict[str, Manifest]], out_dir: Path, header: str = "") -> list[Path]:
    """Writes DIR/SET/FILE.yaml, replacing files of those names; returns the paths."""
    written = []
    for folder, files in sets.items():
        directory = out_dir / folder
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, document in files.items():
            path = directory / file_name
            path.write_text(render([document], header), encoding="utf-8")
            written.append(path)
    return written
