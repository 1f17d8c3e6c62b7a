"""Server settings: command-line flags, or MODELPORT_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
