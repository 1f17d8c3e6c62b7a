"""`modelport k8s`: Kubernetes and KServe manifests for a model repository."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import click

from modelport.deploy.manifest_options import TARGETS, KServeMode, ScaleMetric, Target


@click.command("k8s")
@click.option(
    "--model-repository",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The repository to serve: which model formats it needs.",
)
@click.option("--name", required=True, help="Name of the Deployment, Service, InferenceService.")
@click.option("--image", required=True, help="A modelport image (`modelport build` makes one).")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write DIR/kserve/*.yaml and DIR/kubernetes/*.yaml (default: one YAML stream to stdout).",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="all",
    show_default=True,
    help="kserve: ClusterServingRuntime + InferenceService; kubernetes: Deployment, Service, "
    "HPA, PDB.",
)
@click.option("--namespace", default=None, help="metadata.namespace of namespaced resources.")
@click.option(
    "--api-key-secret",
    default=None,
    help="Secret with the API key file under keys.yaml (default NAME-api-keys; create it with "
    "kubectl create secret generic NAME-api-keys --from-file=keys.yaml).",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="No API keys: only for pods that nothing but an authenticating gateway or mesh can "
    "reach. Anyone reaching a pod can then use, load and unload every model.",
)
@click.option(
    "--tls-secret",
    default=None,
    help="kubernetes.io/tls Secret: the Deployment's two ports serve TLS. (KServe's gateway "
    "terminates TLS itself.)",
)
@click.option("--cpu", default="1", show_default=True, help="CPU request and limit per pod.")
@click.option("--memory", default="2Gi", show_default=True, help="Memory request and limit.")
@click.option("--min-replicas", type=click.IntRange(1), default=1, show_default=True)
@click.option("--max-replicas", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--scale-metric",
    type=click.Choice(get_args(ScaleMetric)),
    default="cpu",
    show_default=True,
    help="What the autoscaler watches; concurrency and rps need --kserve-mode knative.",
)
@click.option(
    "--scale-target",
    type=click.IntRange(1),
    default=None,
    help="Target per pod (default: cpu 70 %, memory 80 %, concurrency 32, rps 500).",
)
@click.option(
    "--kserve-mode",
    type=click.Choice(get_args(KServeMode)),
    default="standard",
    show_default=True,
    help="standard: KServe's Deployment + HPA, HTTP and gRPC; knative: revisions, canary "
    "traffic and scale to concurrency, HTTP only.",
)
@click.option(
    "--canary-traffic-percent",
    type=click.IntRange(0, 100),
    default=None,
    help="Knative mode: the share of traffic a changed InferenceService's new revision gets.",
)
@click.option(
    "--storage-uri",
    default=None,
    help="Where KServe fetches the repository from (s3://, gs://, pvc://...) into /mnt/models "
    "(default: the repository baked into the image).",
)
@click.option(
    "--models-pvc",
    default=None,
    help="Deployment: a PersistentVolumeClaim holding the repository (default: baked in).",
)
@click.option("--runtime-name", default=None, help="The ClusterServingRuntime's name.")
def k8s(
    model_repository: Path,
    name: str,
    image: str,
    output: Path | None,
    target: Target,
    namespace: str | None,
    api_key_secret: str | None,
    allow_unauthenticated: bool,
    tls_secret: str | None,
    cpu: str,
    memory: str,
    min_replicas: int,
    max_replicas: int,
    scale_metric: ScaleMetric,
    scale_target: int | None,
    kserve_mode: KServeMode,
    canary_traffic_percent: int | None,
    storage_uri: str | None,
    models_pvc: str | None,
    runtime_name: str | None,
) -> None:
    """Kubernetes and KServe manifests that serve a model repository.

    A ClusterServingRuntime and an InferenceService for KServe; a Deployment, Service,
    HorizontalPodAutoscaler and PodDisruptionBudget for clusters without it. The pods refuse to
    start without API keys (--api-key-secret) unless --allow-unauthenticated."""
    from modelport.deploy.build_context import ContextError, check_repository
    from modelport.deploy.manifest_options import ManifestOptions, OptionError
    from modelport.deploy.manifests import manifest_sets, stream, write

    try:
        options = ManifestOptions(
            name=name,
            image=image,
            namespace=namespace,
            api_key_secret=api_key_secret,
            allow_unauthenticated=allow_unauthenticated,
            tls_secret=tls_secret,
            cpu=cpu,
            memory=memory,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_metric=scale_metric,
            scale_target=scale_target,
            kserve_mode=kserve_mode,
            canary_traffic_percent=canary_traffic_percent,
            storage_uri=storage_uri,
            models_pvc=models_pvc,
            runtime_name=runtime_name,
        )
        needs = check_repository(model_repository)
    except (OptionError, ContextError) as exc:
        raise click.UsageError(str(exc)) from None
    sets = manifest_sets(options, needs, target)
    header = _header(model_repository, needs.kserve_formats)
    if output is None:
        click.echo(stream(sets, header), nl=False)
        return
    for path in write(sets, output, header):
        click.echo(str(path))
    if options.keys_secret is not None:
        click.echo(
            f"the pods need the Secret {options.keys_secret} in their namespace: kubectl "
            f"create secret generic {options.keys_secret} --from-file=keys.yaml=KEYFILE",
            err=True,
        )


def _header(repository: Path, formats: tuple[str, ...]) -> str:
    from modelport.__about__ import __version__

    shown = ", ".join(formats) or "none"
    return (
        f"# Written by `modelport k8s` (modelport {__version__}) for {repository.name} "
        f"(model formats: {shown}).\n"
    )
