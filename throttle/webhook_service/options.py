"""`POST /api/hubspot/options`: the policy picker of the action's `policy` input field.

HubSpot calls it (signed like the action endpoint) while a user edits a workflow, with a search
text `q` and a paging cursor `after`. The answer lists the portal's policies from the in-memory
`PolicyIndex` (no database), sorted by name; `after` is the last name of the page, so paging stays
stable while policies are added.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from throttle.engine.policy import Policy
from throttle.webhook_service.appkeys import METRICS, POLICY_INDEX, VERIFIER
from throttle.webhook_service.payloads import OptionsRequest, parse
from throttle.webhook_service.verification import refusal

PAGE_SIZE = 50


def describe(policy: Policy) -> str:
    """One line a workflow editor can judge a policy by: rate, cap, window, state."""
    rate = policy.rate
    parts = [f"{rate.limit} per {policy.model_dump(by_alias=True, mode='json')['rate']['period']}"]
    if rate.burst:
        parts.append(f"burst {rate.burst}")
    if policy.daily_cap is not None:
        parts.append(f"at most {policy.daily_cap.limit} a day")
    if policy.schedule is not None:
        parts.append(f"{len(policy.schedule.windows)} release window(s)")
    if policy.paused:
        parts.append("paused")
    return ", ".join(parts)


def page(policies: list[Policy], q: str | None, after: str | None) -> dict[str, Any]:
    needle = (q or "").strip().lower()
    names = sorted((p for p in policies if needle in p.name.lower()), key=lambda p: p.name)
    if after:
        names = [p for p in names if p.name > after]
    chosen = names[:PAGE_SIZE]
    answer: dict[str, Any] = {
        "options": [{"label": p.name, "value": p.name, "description": describe(p)} for p in chosen],
        "searchable": True,
    }
    if len(names) > PAGE_SIZE:
        answer["after"] = chosen[-1].name
    return answer


async def options(request: web.Request) -> web.Response:
    app = request.app
    body = await request.read()
    check = app[VERIFIER].check(request, body)
    if not check.ok:
        app[METRICS].webhook_rejected.labels("options", "signature").inc()
        raise refusal(check)
    payload = parse(OptionsRequest, body)
    policies = app[POLICY_INDEX].policies(payload.origin.portal_id)
    fetch = payload.fetch_options
    return web.json_response(page(policies, fetch.q, fetch.after))


routes = [web.post("/api/hubspot/options", options)]
