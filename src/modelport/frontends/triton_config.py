"""Triton's model-configuration JSON, which perf_analyzer and Triton tooling read."""

from __future__ import annotations

from typing import Any

from modelport.core.data_plane import ModelHandle
from modelport.core.types import TensorSpec

_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "ensemble": "",
}


def model_config(handle: ModelHandle) -> dict[str, Any]:
    """The config in Triton's shape: dims exclude the batch dimension when max_batch_size > 0."""
    batch = handle.signature.max_batch_size

    def dims(spec: TensorSpec) -> list[int]:
        return list(spec.shape[1:] if batch > 0 else spec.shape)

    config: dict[str, Any] = {
        "name": handle.name,
        "platform": handle.triton_platform,
        "backend": _BACKENDS.get(handle.triton_platform, handle.platform),
        "version_policy": handle.config.version_policy.as_triton(),
        "max_batch_size": batch,
        "input": [
            {
                "name": spec.name,
                "data_type": spec.datatype.triton_name,
                "format": "FORMAT_NONE",
                "dims": dims(spec),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for spec in handle.signature.inputs
        ],
        "output": [
            {
                "name": spec.name,
                "data_type": spec.datatype.triton_name,
                "dims": dims(spec),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for spec in handle.signature.outputs
        ],
        "instance_group": [
            {"name": f"{handle.name}_0", "kind": "KIND_CPU", "count": handle.config.instance_count}
        ],
        "default_model_filename": handle.config.default_model_filename or "",
        "parameters": {},
    }
    if handle.config.pipeline:
        config["ensemble_scheduling"] = {
            "step": [
                {
                    "model_name": step.model,
                    "model_version": int(step.version)
                    if step.version and step.version.isdigit()
                    else -1,
                    "input_map": dict(step.inputs),
                    "output_map": dict(step.outputs),
                }
                for step in handle.config.pipeline
            ]
        }
    batching = handle.config.dynamic_batching
    if batching is not None:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": round(batching.max_queue_delay * 1e6),
            "default_queue_policy": {"max_queue_size": batching.max_queue_size or 0},
        }
    return config
