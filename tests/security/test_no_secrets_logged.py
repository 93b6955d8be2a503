"""No secret, token or full signature in any log line, error body or metric.

The service runs at DEBUG through the production logging setup while this test walks every path
that touches a secret: signed executions (v3 and v2), forged signatures, the config API with
right and wrong tokens, the whole OAuth install (code, access and refresh tokens), a replayed
callback, the uninstall webhook, malformed input and a scrape of /metrics. Then it greps the
log, every answer it received and the metrics text for each secret value it knows of.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.live_webhook import (
    ACTION_PATH,
    OPTIONS_PATH,
    LiveWebhook,
    dumps,
    execution,
    secrets_of,
)
from throttle_dev.simulator.driver import send_uninstall

PORTAL = 880011


def _leaks(haystack: str, needles: dict[str, str]) -> list[str]:
    return sorted(name for name, value in needles.items() if value and value in haystack)


def test_nothing_secret_reaches_logs_answers_or_metrics(live_webhook: LiveWebhook) -> None:
    live = live_webhook
    live.add_policy()
    answers: list[str] = []
    needles = dict(secrets_of(live.settings))
    for key in live.settings.encryption_keys:
        needles[f"ENCRYPTION_KEY {key.key_id} (hex)"] = key.material.hex()
        needles[f"ENCRYPTION_KEY {key.key_id} (base64)"] = base64.b64encode(key.material).decode()

    # Signed executions and options calls, v3 and v2, and their full signatures.
    for version in ("v3", "v2"):
        for path in (ACTION_PATH, OPTIONS_PATH):
            body = dumps(execution())
            headers = live.signed(body, path, version=version)
            signature = headers.get("X-HubSpot-Signature-v3") or headers["X-HubSpot-Signature"]
            needles[f"signature {version} {path}"] = signature
            response = live.http.post(live.url + path, data=body, headers=headers, timeout=30)
            assert response.status_code == 200, response.text
            answers.append(response.text)
            # The same signature on other bytes: refused, and the refusal must not echo it.
            forged = live.http.post(live.url + path, data=body + b" ", headers=headers, timeout=30)
            assert forged.status_code == 401
            answers.append(forged.text)

    # Config API: right token, wrong token, malformed body.
    right = live.bearer()
    for headers in (right, live.bearer("wrong-" + "y" * 30), {}):
        for method, path, data in (
            ("GET", "/api/config", None),
            (
                "PUT",
                "/api/config/42/policies/p1",
                json.dumps({"rate": {"limit": 1, "period": "1s"}}),
            ),
            ("PUT", "/api/config/42/policies/p1", "{not json"),
        ):
            response = live.http.request(
                method,
                live.url + path,
                data=data,
                headers={**headers, "Content-Type": "application/json"},
                timeout=30,
            )
            assert response.status_code < 500, response.text
            answers.append(response.text)

    # The OAuth install, then a replay of its callback URL.
    ours = live.http.get(live.url + "/api/oauth/authorize", allow_redirects=False, timeout=30)
    hubspot = live.http.get(
        ours.headers["Location"] + f"&portal_id={PORTAL}", allow_redirects=False, timeout=30
    )
    callback_url = hubspot.headers["Location"]
    query = parse_qs(urlsplit(callback_url).query)
    needles["oauth code"] = query["code"][0]
    for _ in range(2):
        response = live.http.get(callback_url, timeout=30)
        answers.append(response.text)
    assert any("installed" in a for a in answers)
    for token in list(live.sim.access_tokens) + list(live.sim.refresh_tokens):
        needles[f"HubSpot token {token[:4]}..."] = token
    assert len([n for n in needles if n.startswith("HubSpot token")]) >= 2

    # The uninstall webhook, signed by the simulator with the client secret.
    status = live.run(send_uninstall(live.sim, live.url + "/api/hubspot/uninstall", PORTAL))
    assert status == 200

    metrics = live.http.get(live.url + "/metrics", timeout=30).text
    assert "throttle_" in metrics

    log = live.log_text()
    assert "POST /api/hubspot/action" in log, "the service's log was not captured"
    assert '"level": "DEBUG"' in log or '"level": "INFO"' in log
    assert not _leaks(log, needles), f"in the log: {_leaks(log, needles)}"
    assert not _leaks("\n".join(answers), needles), "in an answer body"
    assert not _leaks(metrics, needles), "in /metrics"
