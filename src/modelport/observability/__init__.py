"""Metrics and logging, plugged into the core through the protocols it declares."""
