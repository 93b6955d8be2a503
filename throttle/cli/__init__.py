"""The `throttle` command: starts each deployable and carries the operating tools."""
