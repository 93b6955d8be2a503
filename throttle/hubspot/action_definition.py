"""The action definition HubSpot needs, kept as data (`action_definition.json`), and registering it.

The JSON holds `${PUBLIC_URL}` where the action and options URLs go; `register_action` fills it
in, then updates the app's existing Throttle definition (same action URL, or same English action
name) or creates one, so running `throttle hubspot register-action` twice changes nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from throttle.hubspot.client import DeveloperAuth, HubSpotClient

PLACEHOLDER = "${PUBLIC_URL}"


def action_definition(public_url: str) -> dict[str, Any]:
    text = files("throttle.hubspot").joinpath("action_definition.json").read_text(encoding="utf-8")
    definition: dict[str, Any] = json.loads(text.replace(PLACEHOLDER, public_url.rstrip("/")))
    return definition


@dataclass(frozen=True)
class Registration:
    definition_id: str
    created: bool
    action_url: str


def _same_action(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if existing.get("actionUrl") == wanted["actionUrl"]:
        return True
    name = ((existing.get("labels") or {}).get("en") or {}).get("actionName")
    return bool(name) and name == wanted["labels"]["en"]["actionName"]


async def register_action(
    client: HubSpotClient, app_id: int, auth: DeveloperAuth, public_url: str
) -> Registration:
    wanted = action_definition(public_url)
    for existing in await client.list_definitions(app_id, auth):
        if _same_action(existing, wanted):
            updated = await client.update_definition(app_id, str(existing["id"]), wanted, auth)
            return Registration(str(updated["id"]), False, wanted["actionUrl"])
    created = await client.create_definition(app_id, wanted, auth)
    return Registration(str(created["id"]), True, wanted["actionUrl"])
