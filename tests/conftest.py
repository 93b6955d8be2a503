"""Every test talks to real services; the plugins below start them once per session."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.kube",
    "tests.fixtures.hubspot_simulator",
]
