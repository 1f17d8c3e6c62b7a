"""The live dashboard: a page served by modelport itself (package data, our own script and
charts, no build step) and the data endpoint it polls."""

from modelport.frontends.rest.dashboard.routes import STATIC_TYPES, dashboard_routes

__all__ = ["STATIC_TYPES", "dashboard_routes"]
