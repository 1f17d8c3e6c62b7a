"""Server settings: command-line flags, or MODELPORT_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelport.frontends.queue.endpoint import EndpointError, QueueEndpoint, parse_endpoints

EXAMPLE_REPOSITORY = Path(__file__).parent / "examples" / "repository"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="forbid")

    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_tensor_elements: int = Field(default=1 << 26, ge=1)
    strict_readiness: bool = False
    log_level: str = "info"
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_secs: float = Field(default=5.0, gt=0, le=3600)
    load_model: tuple[str, ...] = ()
    """Models to load at start in explicit mode ("*" for all); other modes load everything."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the ports, each with its own copy of the models (serving.py)."""
    queue: Annotated[tuple[str, ...], NoDecode] = ()
    """Message queues to serve (--queue, repeatable; MODELPORT_QUEUE is comma-separated)."""

    @field_validator("queue", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        return tuple(value.split(",")) if isinstance(value, str) else value

    @field_validator("queue")
    @classmethod
    def _queues_usable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            parse_endpoints(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    def queue_endpoints(self) -> tuple[QueueEndpoint, ...]:
        return parse_endpoints(self.queue)

    @model_validator(mode="after")
    def _one_process_for_explicit_control(self) -> ServerSettings:
        if self.workers > 1 and self.model_control_mode == "explicit":
            raise ValueError(
                "--model-control-mode explicit needs --workers 1: a load or unload request "
                "reaches one worker only; use poll mode to change models under several workers"
            )
        return self

    def startup_models(self) -> tuple[str, ...]:
        if self.model_control_mode != "explicit":
            return ("*",)
        return self.load_model

    @property
    def repository(self) -> Path:
        return self.model_repository or EXAMPLE_REPOSITORY

    @property
    def uses_examples(self) -> bool:
        return self.model_repository is None
