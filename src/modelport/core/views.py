"""What the data plane reports about itself and its models, as typed values.

The dictionaries have the v2 protocol's (and Triton's) field names, so a frontend serializes them
as they are; `VersionStatus` is for frontends that describe versions in their own terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from modelport.core.types import TensorMetadata
from modelport.core.versions import ModelState


class ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class IndexRow(TypedDict):
    """One row of the repository index: a model version, or a model with no version."""

    name: str
    state: str
    reason: str
    version: NotRequired[str]
    labels: NotRequired[list[str]]
    traffic: NotRequired[float]


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version of a model and the state it is in (READY, FAILED with its reason, ...)."""

    version: str
    state: ModelState
    reason: str
