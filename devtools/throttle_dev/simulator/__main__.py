"""`throttle-dev simulator` (or `python -m throttle_dev.simulator`): the HubSpot simulator as a
server, for the demo, the fault suite and anyone trying the webhook by hand. A development tool:
it is not in the runtime image, so it is not a `throttle` command."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from throttle.cli.startup import settings_for
from throttle_dev.simulator.server import serve
from throttle_dev.simulator.state import Faults, SimulatorConfig


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8090, show_default=True, help="Port to listen on.")
@click.option("--client-id", default=None, help="App client id (default: HUBSPOT_CLIENT_ID).")
@click.option(
    "--client-secret", default=None, help="App client secret (default: HUBSPOT_CLIENT_SECRET)."
)
@click.option("--app-id", type=int, default=None, help="App id (default: HUBSPOT_APP_ID).")
@click.option(
    "--developer-api-key", default=None, help="hapikey (default: HUBSPOT_DEVELOPER_API_KEY)."
)
@click.option("--token-ttl", type=int, default=1800, show_default=True, help="expires_in (s).")
@click.option("--rate-limit", type=int, default=110, show_default=True, help="Calls per window.")
@click.option("--rate-window", type=float, default=10.0, show_default=True, help="Window (s).")
@click.option("--error-ratio", type=float, default=0.0, help="Share of API calls answered 5xx.")
@click.option("--latency-ms", type=float, default=0.0, help="Added to every API answer.")
@click.option("--storm-seconds", type=float, default=0.0, help="429 storm from start, seconds.")
@click.option("--max-expiration", type=float, default=None, help="Cap BLOCK expirations (s).")
@click.option("--seed", type=int, default=None, help="Random seed for injected faults.")
def main(
    host: str,
    port: int,
    client_id: str | None,
    client_secret: str | None,
    app_id: int | None,
    developer_api_key: str | None,
    token_ttl: int,
    rate_limit: int,
    rate_window: float,
    error_ratio: float,
    latency_ms: float,
    storm_seconds: float,
    max_expiration: float | None,
    seed: int | None,
) -> None:
    """Serve the HubSpot simulator (OAuth, completion, rate limits, faults; admin API /_sim)."""
    settings = settings_for()
    secret = settings.hubspot_client_secret
    dev_key = settings.hubspot_developer_api_key
    config = SimulatorConfig(
        client_id=client_id or settings.hubspot_client_id or "sim-client-id",
        client_secret=client_secret
        or (secret.get_secret_value() if secret else "sim-client-secret"),
        app_id=app_id or settings.hubspot_app_id or 424242,
        developer_api_key=developer_api_key
        or (dev_key.get_secret_value() if dev_key else "sim-developer-key"),
        access_token_ttl_s=token_ttl,
        rate_limit=rate_limit,
        rate_window_s=rate_window,
        max_expiration_s=max_expiration,
        seed=seed,
    )
    faults = Faults(error_ratio=error_ratio, latency_ms=latency_ms)
    if storm_seconds:
        faults.update({"storm_seconds": storm_seconds})
    click.echo(
        f"HubSpot simulator on http://{host}:{port} (app {config.app_id}); report: /_sim/report"
    )
    # SIGTERM stops it as Ctrl-C does: as a container's PID 1 it would otherwise be ignored, and
    # the pod would wait out its whole grace period on every delete.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port, faults))


if __name__ == "__main__":
    main(prog_name="python -m throttle_dev.simulator")
