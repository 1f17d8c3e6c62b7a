"""Triton's `config.pbtxt` (protobuf text format of ModelConfig), read into a ModelConfig so a
Triton model repository serves unchanged.

The text format is parsed here rather than with protobuf's text_format: that would need Triton's
ModelConfig descriptors in this process, whose names clash with tritonclient's copies of the same
.proto files, and the grammar a config uses is small (fields, lists, nested blocks, comments).
Fields that modelport has no use for (model_warmup, optimization, ...) are reported, not refused.
"""

from __future__ import annotations

import re
from typing import Any

from modelport.core.config import ModelConfig
from modelport.core.types import DataType

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*) |
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
        (?P<punct>[{}\[\]:,;<>]) |
        (?P<word>[A-Za-z0-9_.+\-]+)
    )""",
    re.VERBOSE,
)

PLATFORMS = {
    "onnxruntime_onnx": "onnx",
    "onnxruntime": "onnx",
    "pytorch_libtorch": "torch",
    "pytorch": "torch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow": "tensorflow",
    "python": "python",
}
USED = {
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "version_policy",
    "dynamic_batching",
    "instance_group",
    "default_model_filename",
    "parameters",
}


class PbtxtError(ValueError):
    pass


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Protobuf text format -> dict; a repeated field (or one written as a list) -> list."""
    tokens = _tokenize(text)
    position, fields = _fields(tokens, 0, closing=None)
    if position != len(tokens):
        raise PbtxtError(f"unexpected {tokens[position]!r}")
    return fields


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip() == "":
                break
            line = text.count("\n", 0, position) + 1
            raise PbtxtError(f"line {line}: cannot read {text[position : position + 20]!r}")
        position = match.end()
        if match.group("comment") is None and match.lastgroup is not None:
            tokens.append(match.group(match.lastgroup))
    return tokens


def _fields(tokens: list[str], position: int, closing: str | None) -> tuple[int, dict[str, Any]]:
    fields: dict[str, Any] = {}
    while position < len(tokens):
        token = tokens[position]
        if token == closing:
            return position + 1, fields
        if token in ",;":
            position += 1
            continue
        key = token
        position += 1
        if position < len(tokens) and tokens[position] == ":":
            position += 1
        position, value = _value(tokens, position)
        if key in fields:
            existing = fields[key]
            fields[key] = (existing if isinstance(existing, list) else [existing]) + (
                value if isinstance(value, list) else [value]
            )
        else:
            fields[key] = value
    if closing is not None:
        raise PbtxtError(f"missing '{closing}'")
    return position, fields


def _value(tokens: list[str], position: int) -> tuple[int, Any]:
    if position >= len(tokens):
        raise PbtxtError("a field has no value")
    token = tokens[position]
    if token in "{<":
        return _fields(tokens, position + 1, "}" if token == "{" else ">")
    if token == "[":
        items: list[Any] = []
        position += 1
        while position < len(tokens) and tokens[position] != "]":
            if tokens[position] == ",":
                position += 1
                continue
            position, item = _value(tokens, position)
            items.append(item)
        if position >= len(tokens):
            raise PbtxtError("missing ']'")
        return position + 1, items
    return position + 1, _scalar(token)


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token  # an enum name such as TYPE_FP32 or KIND_CPU


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def to_model_config(fields: dict[str, Any], name: str) -> tuple[ModelConfig, list[str]]:
    """A ModelConfig from parsed config.pbtxt fields, and the names of the fields left unused."""
    ignored = sorted(set(fields) - USED)
    platform_name = fields.get("platform") or fields.get("backend") or "onnxruntime_onnx"
    if platform_name not in PLATFORMS:
        raise PbtxtError(
            f"platform/backend '{platform_name}' is not one modelport serves "
            f"(known: {', '.join(sorted(PLATFORMS))})"
        )
    max_batch = int(fields.get("max_batch_size", 0))
    config: dict[str, Any] = {
        "name": fields.get("name", name),
        "platform": PLATFORMS[platform_name],
        "max_batch_size": max_batch,
        "inputs": [_tensor(t, max_batch) for t in _listed(fields.get("input"))],
        "outputs": [_tensor(t, max_batch) for t in _listed(fields.get("output"))],
    }
    if "default_model_filename" in fields:
        config["default_model_filename"] = fields["default_model_filename"]
    if "version_policy" in fields:
        config["version_policy"] = _version_policy(fields["version_policy"])
    if "dynamic_batching" in fields:
        config["dynamic_batching"] = _batching(fields["dynamic_batching"])
    groups = _listed(fields.get("instance_group"))
    if groups:
        config["instance_count"] = sum(int(g.get("count", 1)) for g in groups)
        if any(g.get("kind") == "KIND_GPU" for g in groups):
            config["runtime"] = {"execution_providers": ["cuda", "cpu"]}
    parameters = _listed(fields.get("parameters"))
    if parameters:
        config["parameters"] = {
            p["key"]: p.get("value", {}).get("string_value", "") for p in parameters
        }
    try:
        return ModelConfig.model_validate(config), ignored
    except ValueError as exc:
        raise PbtxtError(str(exc)) from None


def _tensor(fields: dict[str, Any], max_batch: int) -> dict[str, Any]:
    datatype = str(fields.get("data_type", ""))
    if not datatype.startswith("TYPE_"):
        raise PbtxtError(f"tensor '{fields.get('name')}' has no data_type")
    short = datatype.removeprefix("TYPE_")
    if short == "STRING":
        short = "BYTES"
    dims = [int(d) for d in _listed(fields.get("dims"))]
    shape = [-1, *dims] if max_batch > 0 else dims
    return {"name": fields.get("name"), "datatype": DataType.parse(short).value, "shape": shape}


def _version_policy(fields: dict[str, Any]) -> dict[str, Any]:
    if "all" in fields:
        return {"all": True}
    if "specific" in fields:
        return {"specific": [int(v) for v in _listed(fields["specific"].get("versions"))]}
    if "latest" in fields:
        return {"latest": int(fields["latest"].get("num_versions", 1))}
    return {}


def _batching(fields: dict[str, Any]) -> dict[str, Any]:
    batching: dict[str, Any] = {
        "preferred_batch_sizes": [int(v) for v in _listed(fields.get("preferred_batch_size"))],
        "max_queue_delay": f"{int(fields.get('max_queue_delay_microseconds', 0))}us",
    }
    policy = fields.get("default_queue_policy") or {}
    if int(policy.get("max_queue_size", 0)) > 0:
        batching["max_queue_size"] = int(policy["max_queue_size"])
    return batching
