"""The webhook service: the HTTP face of Throttle (HubSpot action, options, config API, OAuth)."""
