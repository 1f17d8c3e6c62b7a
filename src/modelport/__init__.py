"""modelport: optimize, deploy and serve machine-learning models."""

from modelport.__about__ import __version__
from modelport.core.config import ModelConfig
from modelport.core.data_plane import DataPlane
from modelport.core.errors import ErrorKind, ModelportError
from modelport.core.types import DataType, InferRequest, InferResponse, TensorSpec

__all__ = [
    "DataPlane",
    "DataType",
    "ErrorKind",
    "InferRequest",
    "InferResponse",
    "ModelConfig",
    "ModelportError",
    "TensorSpec",
    "__version__",
]
