"""What one unary gRPC call costs our HTTP/2 server and gRPC layer, measured without sockets or
a load generator: the client's bytes (HEADERS + DATA per call, a WINDOW_UPDATE per batch) are
built beforehand and fed to a Connection, whose handler answers a canned reply. This is the
transport floor without the noise of h2load and the kernel, so a change of a few hundred
nanoseconds per call shows; it compares this checkout with another one (`--before`, a checkout
whose src/ is put first on PYTHONPATH), in alternating rounds, each side in its own process.

    python benchmarks/http2_call_cost.py --before /tmp/checkout-of-efdb2d7 [--rounds 4]
        --> benchmarks/results/http2-call-cost-DATE-TAG.md

Pinned to one CPU (taskset -c 0) when taskset exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_model, git_state

HERE = Path(__file__).resolve().parent


class _Transport(asyncio.Transport):
    """Takes the server's bytes and throws them away (their size is all that is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    size = len(payload)
    return struct.pack(">BHBBI", size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


async def _calls_per_second(batch: int, batches: int, warm: int) -> float:
    import hpack
    from transport_servers import PATH, canned_messages

    from modelport.frontends.grpc.generated import inference_pb2 as pb
    from modelport.frontends.grpc.http2 import frames as f
    from modelport.frontends.grpc.http2.connection import Connection
    from modelport.frontends.grpc.http2.limits import Http2Limits
    from modelport.frontends.grpc.rpc import Dispatcher, Method

    request, reply = canned_messages()
    answered = 0

    async def infer(message: Any, call: Any) -> Any:
        nonlocal answered
        answered += 1
        return reply

    methods = {PATH.encode(): Method(pb.ModelInferRequest, False, infer)}
    connection = Connection(Dispatcher(methods, 64 << 20), Http2Limits())
    transport = _Transport()
    connection.connection_made(transport)
    body = request.SerializeToString()
    message = b"\0" + struct.pack(">I", len(body)) + body
    fields = [(":method", "POST"), (":scheme", "http"), (":path", PATH),
              (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
              ("te", "trailers")]  # fmt: skip
    encoder = hpack.Encoder()
    answer_bytes = batch * (5 + len(reply.SerializeToString()))  # what the windows must give back
    chunks, stream_id = [], 1
    for _ in range(batches):
        chunk = bytearray()
        for _ in range(batch):
            chunk += _frame(1, 4, stream_id, encoder.encode(fields)) + _frame(
                0, 1, stream_id, message
            )
            stream_id += 2
        chunks.append(bytes(chunk + _frame(8, 0, 0, struct.pack(">I", answer_bytes))))
    connection.data_received(f.PREFACE + _frame(4, 0, 0, b""))
    started, counted = time.perf_counter(), 0
    for index, chunk in enumerate(chunks):
        wanted = answered + batch
        connection.data_received(chunk)
        spins = 0
        while answered < wanted:
            await asyncio.sleep(0)
            spins += 1
            if spins > 100_000 or transport.closed:
                raise SystemExit(f"the connection stopped answering at batch {index}")
        if index + 1 == warm:
            started, counted = time.perf_counter(), answered
    return (answered - counted) / (time.perf_counter() - started)


def _child(args: argparse.Namespace) -> None:
    import uvloop

    sys.path.insert(0, str(HERE))
    print(uvloop.run(_calls_per_second(args.batch, args.batches, args.warm)))


def _measure(src: Path | None, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = [sys.executable, __file__, "--child", "--batch", str(args.batch),
               "--batches", str(args.batches), "--warm", str(args.warm)]  # fmt: skip
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout (its src/ is measured)")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="calls in flight per batch")
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=200, help="batches before timing starts")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    sides: dict[str, Path | None] = {"this checkout": None}
    if args.before is not None:
        sides = {"before": args.before / "src", **sides}
    found: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            found[side].append(_measure(sides[side], args))
            print(f"round {round_ + 1}: {side}: {found[side][-1]:,.0f} calls/s", flush=True)
    lines = [
        f"# HTTP/2 + gRPC cost per unary call ({time.strftime('%Y-%m-%d')}, {args.tag})",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{git_state()}.",
        f"Command: `python benchmarks/http2_call_cost.py {' '.join(sys.argv[1:])}`",
        "",
        "| side | calls/s (median) | us per call | rounds |",
        "|---|---:|---:|---|",
    ]
    for side, values in found.items():
        median = statistics.median(values)
        shown = ", ".join(f"{value:,.0f}" for value in values)
        lines.append(f"| {side} | {median:,.0f} | {1e6 / median:.2f} | {shown} |")
    if args.before is not None:
        before, after = (statistics.median(found[side]) for side in sides)
        lines += ["", f"This checkout / before: {after / before:.3f}; "
                  f"{1e6 / after - 1e6 / before:+.2f} us per call."]  # fmt: skip
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"http2-call-cost-{time.strftime('%Y-%m-%d')}-{args.tag}.md").write_text(report)


if __name__ == "__main__":
    main()
