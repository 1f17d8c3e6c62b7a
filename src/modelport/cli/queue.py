"""`modelport queue send`: put v2 inference requests on a queue and print (or save) the replies."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from modelport.core.types import DataType
from modelport.frontends.queue.client import OutgoingRequest, QueueClient, client_for
from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import EndpointError, parse_endpoint


@click.group()
def queue() -> None:
    """Talk to a modelport server through a message queue."""


@queue.command()
@click.argument("url")
@click.option("--model", default=None, help="The model (not needed if the URL binds one).")
@click.option("--version", default=None, help="A version number or label.")
@click.option(
    "--input",
    "inputs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="An .npz file: one array per model input, named as the input.",
)
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1, help="Requests to send.")
@click.option("--wait/--no-wait", default=False, help="Wait for every reply and print it.")
@click.option("--timeout", type=float, default=30.0, help="Seconds to wait for the replies.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --wait: save the first reply's outputs to this .npz instead of printing them.",
)
@click.option("--reply-to", default=None, help="Where replies go (default: the queue's replies).")
def send(
    url: str,
    model: str | None,
    version: str | None,
    inputs: Path,
    count: int,
    wait: bool,
    timeout: float,
    output: Path | None,
    reply_to: str | None,
) -> None:
    """Send requests to the queue at URL (redis://, amqp:// or nats://)."""
    try:
        endpoint = parse_endpoint(url)
    except EndpointError as exc:
        raise click.UsageError(str(exc)) from None
    with np.load(inputs, allow_pickle=False) as archive:
        body = request_body({name: archive[name] for name in archive.files})
    target = reply_to or endpoint.replies
    requests = [
        OutgoingRequest(body, uuid.uuid4().hex, model, version, reply_to) for _ in range(count)
    ]
    replies = asyncio.run(_exchange(client_for(endpoint), requests, target, wait, timeout))
    if not wait:
        click.echo(f"sent {count} request(s) to {endpoint.requests} on {endpoint.safe_url}")
        return
    wanted = {request.request_id for request in requests}
    answered = [reply for reply in replies if reply.request_id in wanted]
    for reply in answered:
        if output is not None and reply.status == 200:
            save_outputs(reply, output)
            click.echo(f"{reply.request_id} {reply.status} -> {output}")
            output = None
        else:
            click.echo(f"{reply.request_id} {reply.status} {reply.body.decode('utf-8', 'replace')}")
    if len(answered) < count:
        click.echo(f"{count - len(answered)} reply(ies) missing after {timeout:g} s", err=True)
        sys.exit(1)


async def _exchange(
    client: QueueClient, requests: list[OutgoingRequest], reply_to: str, wait: bool, timeout: float
) -> list[Reply]:
    await client.connect()
    try:
        for request in requests:
            await client.send(request)
        if not wait:
            return []
        wanted = {request.request_id for request in requests}
        got: list[Reply] = []
        deadline = time.monotonic() + timeout
        while len([r for r in got if r.request_id in wanted]) < len(wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got.extend(await client.replies(reply_to, 1000, min(left, 1.0)))
        return got
    finally:
        await client.close()


def request_body(arrays: dict[str, np.ndarray]) -> bytes:
    """A v2 JSON request body for the arrays (strings as BYTES)."""
    inputs: list[dict[str, Any]] = []
    for name, array in arrays.items():
        datatype = DataType.from_numpy(array.dtype)
        data: Any = (
            [item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()]
            if datatype is DataType.BYTES
            else array.ravel()
        )
        inputs.append(
            {"name": name, "datatype": datatype.value, "shape": list(array.shape), "data": data}
        )
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def save_outputs(reply: Reply, path: Path) -> None:
    document = orjson.loads(reply.body)
    arrays = {
        item["name"]: np.asarray(item["data"], dtype=_numpy(item["datatype"])).reshape(
            item["shape"]
        )
        for item in document["outputs"]
    }
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub fears allow_pickle=


def _numpy(datatype: str) -> np.dtype[Any]:
    parsed = DataType.parse(datatype)
    return np.dtype(str) if parsed is DataType.BYTES else parsed.numpy_dtype
