"""`GET /v2/alerts`: the server's SLO alerts (firing, then lately resolved) and the canary
rollbacks it made, as the SLO loop (operations/alerting.py) keeps them. Scope: metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.alerts import AlertBoard
from modelport.frontends.rest.v2 import json_response


def alert_routes(board: AlertBoard) -> list[Route]:
    async def alerts(request: Request) -> Response:
        return json_response(board.report())

    return [Route("/v2/alerts", alerts, methods=["GET"])]
