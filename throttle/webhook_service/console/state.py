"""The console's state, kept on its app under `appkeys.CONSOLE` (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
from aiohttp import web

from throttle.engine.queue_status import StatusReader
from throttle.settings import Settings
from throttle.webhook_service.console.sessions import SessionSigner


@dataclass
class Console:
    host: web.Application
    """The webhook app: its cleanup contexts open the clients the console reads."""
    settings: Settings
    signer: SessionSigner
    templates: jinja2.Environment
    status_reader: StatusReader | None = None
    """`throttle status`'s reader, made as `throttle status` makes it (its own Redis client,
    the HubSpot budget terms of the settings), open while the app runs (`app.reader_ctx`)."""
