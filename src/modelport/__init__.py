"""modelport: optimize, deploy and serve machine-learning models."""

from modelport.__about__ import __version__
from modelport.core.config import ModelConfig
from modelport.core.errors import ErrorKind, ModelportError
from modelport.core.server import InferenceServer
from modelport.core.types import DataType, InferRequest, InferResponse, TensorSpec

__all__ = [
    "DataType",
    "ErrorKind",
    "InferRequest",
    "InferResponse",
    "InferenceServer",
    "ModelConfig",
    "ModelportError",
    "TensorSpec",
    "__version__",
]
