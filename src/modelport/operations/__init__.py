"""Acting on what the server measures: its SLO alerts, their webhooks and canary rollbacks
(`alerting.py`, `webhooks.py`), and the Prometheus rules and Grafana dashboard that say the same
for a team's own monitoring (`prometheus_rules.py`, `grafana.py`).

The decisions are the core's (core/slo.py, core/alerts.py); this package runs the loop and talks
to the outside. It knows the core only: the window of recent requests, the alert gauge and the
config file on disk come in through the core's protocols and callables that app.py wires."""
