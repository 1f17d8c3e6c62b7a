"""HTTP frontend: the v2 REST protocol (with Triton's binary tensor extension) and /metrics."""

from modelport.frontends.rest.app import create_app

__all__ = ["create_app"]
