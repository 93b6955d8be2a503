"""Throttle: a HubSpot workflow action that holds executions and releases them at a chosen rate."""

__version__ = "0.1.0"
