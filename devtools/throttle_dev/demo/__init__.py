"""`make demo`: the whole product on local processes, driven by the HubSpot simulator.

`python -m throttle_dev.demo --duration 3m` starts the stack (`throttle_dev.stack`), installs the
app in several simulated portals through the real OAuth flow, loads the demo's ThrottlePolicy
manifests, sends a burst of enrollments, shows queued / released / completed per policy live, and
ends with a report table and a plot of releases per second per policy against its limit.
"""
