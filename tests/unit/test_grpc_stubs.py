"""Our generated stubs are current, and wire-compatible with the published v2/Triton protos.

Our modules and tritonclient's register the same `inference.*` names in protobuf's default pool,
so ours are only ever imported in a subprocess here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[2]

DUMP = """
import json
from modelport.frontends.grpc.generated import inference_pb2 as pb

def fields(d):
    out = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        out.update({f"{n.name}.{k}": v for k, v in fields(n).items()})
    return out

service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
print(json.dumps({
    "service": service.full_name,
    "methods": {m.name: [m.input_type.name, m.output_type.name, m.client_streaming]
                for m in service.methods},
    "messages": {name: fields(d) for name, d in pb.DESCRIPTOR.message_types_by_name.items()},
}))
"""


def _fields(descriptor: Descriptor) -> dict[str, list]:
    out = {f.name: [f.number, f.type, f.is_repeated] for f in descriptor.fields}
    for nested in descriptor.nested_types:
        out.update({f"{nested.name}.{k}": v for k, v in _fields(nested).items()})
    return out


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_grpc.sh"), "--check"],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


def test_every_field_matches_the_published_definition() -> None:
    ours = json.loads(subprocess.check_output([sys.executable, "-c", DUMP], text=True))
    published = service_pb2.DESCRIPTOR
    assert ours["service"] == "inference.GRPCInferenceService"
    triton_methods = published.services_by_name["GRPCInferenceService"].methods_by_name
    for name, (request, response, streaming) in ours["methods"].items():
        method = triton_methods[name]
        assert (method.input_type.name, method.output_type.name) == (request, response)
        assert method.client_streaming == streaming
    from tritonclient.grpc import model_config_pb2

    for name, fields in ours["messages"].items():
        source = (
            published if name in published.message_types_by_name else model_config_pb2.DESCRIPTOR
        )
        theirs = _fields(source.message_types_by_name[name])
        for field, spec in fields.items():
            assert theirs[field] == spec, f"{name}.{field}: ours {spec}, published {theirs[field]}"
