"""Small builders shared by the engine tests."""

from __future__ import annotations

from typing import Any

from throttle.policy import Policy
from throttle.queue import QueueItem


def policy(name: str = "p", portal: int = 7, **spec: Any) -> Policy:
    body: dict[str, Any] = {"name": name, "portalId": portal, "rate": {"limit": 10, "period": "1s"}}
    body.update(spec)
    return Policy.model_validate(body)


def item(cb: str, portal: int = 7, workflow: int | None = 1, **kw: Any) -> QueueItem:
    return QueueItem(
        callback_id=cb,
        portal_id=portal,
        action_definition_id=kw.pop("action", 100),
        workflow_id=workflow,
        object_type="CONTACT",
        object_id=kw.pop("object_id", "1"),
        **kw,
    )
