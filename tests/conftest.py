"""Every test talks to real services; the plugins below start them once per session.

Fixtures and the helpers test modules import live in `tests/fixtures/` (a test module never
imports another); each fixture module is registered here once, whichever folders use it.
"""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.kube_control_plane",
    "tests.fixtures.kube_node",
    "tests.fixtures.hubspot_simulator",
    "tests.fixtures.engine_redis",
    "tests.fixtures.hubspot_tokens",
    "tests.fixtures.webhook",
    "tests.fixtures.console",
    "tests.fixtures.live_webhook",
    "tests.fixtures.served_webhook",
    "tests.fixtures.reverse_proxy",
    "tests.fixtures.operator_thread",
    "tests.fixtures.helm_chart",
    "tests.fixtures.podman",
    "tests.fixtures.browser",
    "tests.fixtures.console_processes",
]
