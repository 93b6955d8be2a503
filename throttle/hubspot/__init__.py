"""Everything HubSpot: the one HTTP client of its API, request signatures, OAuth state, tokens
and their encryption, each portal's API budget, and the action definition."""
