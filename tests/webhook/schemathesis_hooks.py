"""Schemathesis hook (loaded through SCHEMATHESIS_HOOKS): sign HubSpot-facing requests.

Without it every generated request to the HubSpot endpoints would stop at the signature check;
with it, generated payloads reach parsing, policy resolution and the enqueue script. The body is
serialised here and passed as the request's `data`, so the bytes signed are the bytes sent.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import schemathesis

from throttle.hubspot.signatures import sign_v3

SIGNED_PATHS = {"/api/hubspot/action", "/api/hubspot/options", "/api/hubspot/uninstall"}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.path not in SIGNED_PATHS or case.method.upper() != "POST":
        return
    secret = os.environ["THROTTLE_TEST_CLIENT_SECRET"]
    url = os.environ["THROTTLE_TEST_PUBLIC_URL"] + case.path
    body = case.body
    if isinstance(body, bytes):
        raw = body
    else:
        try:
            raw = json.dumps(body).encode()
        except (TypeError, ValueError):
            return  # not JSON-serialisable: send unsigned, expect 401
    ts = int(time.time() * 1000)
    kwargs["data"] = raw
    case.headers = {
        **(case.headers or {}),
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, raw, ts),
        "X-HubSpot-Request-Timestamp": str(ts),
    }
