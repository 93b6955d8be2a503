"""The portal console driven as its users drive it: headless Chromium against the whole product
as processes (Redis, PostgreSQL, the HubSpot simulator and its OAuth, `throttle webhook`, a
dispatcher). Judged from the outside: what `throttle status --json` prints in a process of its
own, what the simulator (HubSpot) saw completed, what axe-core finds on each page. Every page
visited leaves a screenshot in build/screenshots/.

Selected by the ids in /console/'s contract (table#queues, tr[data-queue], td[data-field] with
data-value, form#pause-form, ...): the tests read what a person sees, through the markup a
screen reader reads.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.fixtures.browser import Screenshot, axe_violations, describe_violations
from tests.fixtures.console_processes import (
    PORTAL_A,
    PORTAL_B,
    PORTAL_C,
    ConsoleProcesses,
)
from tests.fixtures.operator_thread import wait_for

pytestmark = pytest.mark.slow

FIELDS = ("rate", "state", "queued", "in_flight", "oldest_wait_s", "drain_s", "released_today")
"""The overview's cells (td[data-field]); data-value is the raw value `status --json` prints."""


# --- what the page shows ------------------------------------------------------------------------
def path_of(browser: WebDriver) -> str:
    return urlsplit(browser.current_url).path


def queue_table(browser: WebDriver) -> dict[str, dict[str, str]]:
    """table#queues as {queue name: {field: data-value}}."""
    rows: dict[str, dict[str, str]] = browser.execute_script(
        """
        const rows = {};
        for (const tr of document.querySelectorAll("table#queues tr[data-queue]")) {
          const cells = {};
          for (const td of tr.querySelectorAll("td[data-field]")) {
            cells[td.dataset.field] = td.dataset.value;
          }
          rows[tr.dataset.queue] = cells;
        }
        return rows;
        """
    )
    return rows


def raw(value: str) -> Any:
    """A data-value as the JSON value it stands for ("" for null)."""
    if value == "":
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def error_text(browser: WebDriver) -> str:
    """The error the page shows, once it shows one: a click that submits a form returns before
    the browser has parsed the answer, so the page is read again until its `#error` is there."""
    try:
        found = wait_for(lambda: browser.find_elements(By.ID, "error"), "an #error", timeout=5)
    except AssertionError:
        raise AssertionError(
            f"{browser.current_url} shows no #error: {browser.page_source[:500]}"
        ) from None
    return str(found[0].text)


def fetch(browser: WebDriver, method: str, path: str, form: dict[str, str] | None = None) -> Any:
    """The HTTP status of a request the page itself makes (its cookies, its origin): what a
    forged form or a hand-written request from a signed-in browser gets."""
    return browser.execute_async_script(
        """
        const [method, url, form, done] = arguments;
        const init = {method, credentials: "same-origin", redirect: "manual",
                      headers: {"Accept": "text/html"}};
        if (form !== null) init.body = new URLSearchParams(form);
        fetch(url, init)
          .then((r) => done(r.type === "opaqueredirect" ? "a redirect (accepted)" : r.status))
          .catch((e) => done(String(e)));
        """,
        method,
        path,
        form,
    )


def csrf_token(browser: WebDriver) -> str:
    """The page's CSRF token (every form carries one; the sign-out form is on every page)."""
    inputs = browser.find_elements(By.CSS_SELECTOR, "input[name=csrf_token]")
    assert inputs, f"no form with a csrf_token on {browser.current_url}"
    return str(inputs[0].get_attribute("value"))


def assert_accessible(browser: WebDriver) -> None:
    """axe-core finds no serious or critical problem on the page shown."""
    found = axe_violations(browser)
    assert found == [], f"axe-core on {browser.current_url}:\n{describe_violations(found)}"


def look(browser: WebDriver, screenshot: Screenshot, label: str) -> None:
    """What every page visited gets: axe-core's judgement and a screenshot (taken first, so a
    failing page is still seen)."""
    screenshot(label)
    assert_accessible(browser)


def printed(console: ConsoleProcesses, portal: int, name: str) -> dict[str, Any]:
    """One queue's figures as `throttle status --json --portal P` prints them."""
    found = [q for q in console.status(portal)["queues"] if q["name"] == name]
    assert len(found) == 1, f"status --json shows {len(found)} queues named {name}"
    return found[0]


def overview(console: ConsoleProcesses, portal: int) -> str:
    return f"{console.url}/console/portals/{portal}"


def queue_page(console: ConsoleProcesses, portal: int, name: str) -> str:
    return f"{overview(console, portal)}/queues/{name}"


def enter_by_link(browser: WebDriver, link: str, portal: int) -> None:
    browser.get(link)
    wait_for(
        lambda: path_of(browser) == f"/console/portals/{portal}",
        f"the link leads to portal {portal}'s overview (at {browser.current_url})",
    )


def tab_to(browser: WebDriver, element_id: str, presses: int = 80) -> None:
    """Press Tab from the top of the page until `element_id` has the focus."""
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    for _ in range(presses):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.execute_script("return document.activeElement.id") == element_id:
            return
    raise AssertionError(f"#{element_id} is not reached by {presses} presses of Tab")


# --- the tests ----------------------------------------------------------------------------------
def test_sign_in_with_hubspot_shows_the_queues_as_status_prints_and_hubspot_counted(
    browser: WebDriver, console_processes: ConsoleProcesses, screenshot: Screenshot
) -> None:
    console = console_processes
    console.put_policy(
        PORTAL_A,
        "steady",
        rate={"limit": 600, "period": "1m"},
        dailyCap={"limit": 5000, "timeZone": "UTC"},
    )
    console.put_policy(PORTAL_A, "held", rate={"limit": 60, "period": "1m"}, paused=True)
    console.put_policy(PORTAL_B, "elsewhere", rate={"limit": 60, "period": "1m"}, paused=True)
    console.send(PORTAL_A, "steady", 20)
    console.send(PORTAL_A, "held", 12)
    console.send(PORTAL_B, "elsewhere", 5)
    wait_for(lambda: len(console.completed(PORTAL_A, "steady")) >= 20, "20 steady completions")

    def settled() -> bool:
        steady = printed(console, PORTAL_A, "steady")
        return bool(steady["queued"] == 0 and steady["in_flight"] == 0)

    wait_for(settled, "steady's completions acknowledged (nothing queued or in flight)")

    browser.get(f"{console.url}/console/sign-in")
    look(browser, screenshot, "sign-in")
    browser.find_element(By.CSS_SELECTOR, "a#sign-in-hubspot").click()
    wait_for(
        lambda: path_of(browser) == f"/console/portals/{PORTAL_A}",
        f"HubSpot's sign-in lands on portal {PORTAL_A}'s overview (at {browser.current_url})",
    )
    look(browser, screenshot, "overview")

    cookie = browser.get_cookie("throttle_console")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Lax")
    assert "expiry" in cookie, "a session cookie that never expires"
    assert "throttle_console" not in browser.execute_script("return document.cookie")

    shown_at = time.monotonic()
    shown = queue_table(browser)
    status = console.status(PORTAL_A)
    elapsed = time.monotonic() - shown_at
    queues = {q["name"]: q for q in status["queues"]}
    assert set(shown) == set(queues), (shown, status)
    assert {"steady", "held"} <= set(shown)
    assert "elsewhere" not in shown, "portal B's queue on portal A's page"
    for name, cells in shown.items():
        for field in FIELDS:
            assert field in cells, f"{name} has no td[data-field={field}]"
            if field == "oldest_wait_s" and queues[name][field] is not None:
                assert abs(raw(cells[field]) - queues[name][field]) <= elapsed + 2.5, (name, cells)
            else:
                assert raw(cells[field]) == queues[name][field], (name, field, cells, queues[name])

    # HubSpot's count: each of steady's releases was completed there once, and nothing of held.
    completed = console.completed(PORTAL_A, "steady")
    assert len({c["callbackId"] for c in completed}) == len(completed) == 20
    assert raw(shown["steady"]["released_today"]) == 20
    assert queues["steady"]["completed_total"] == 20
    assert console.completed(PORTAL_A, "held") == []
    assert (raw(shown["held"]["state"]), raw(shown["held"]["queued"])) == ("paused", 12)
    assert raw(shown["held"]["drain_s"]) is None


def test_an_operator_link_pauses_and_resumes_what_hubspot_sees_released_by_keyboard(
    browser: WebDriver, console_processes: ConsoleProcesses, screenshot: Screenshot
) -> None:
    console = console_processes
    console.put_policy(PORTAL_C, "enrichment", rate={"limit": 120, "period": "1m"})
    console.put_policy(PORTAL_C, "background", rate={"limit": 120, "period": "1m"})
    console.send(PORTAL_C, "enrichment", 240)
    console.send(PORTAL_C, "background", 240)

    enter_by_link(
        browser, console.link(PORTAL_C, "operator", "--name", "Olivia Operator"), PORTAL_C
    )
    # The overview refreshes itself: the same document shows background's queue shrinking.
    browser.execute_script("window.sameDocument = true")
    first = queue_table(browser)["background"]["queued"]
    wait_for(
        lambda: queue_table(browser)["background"]["queued"] != first,
        "the overview's figures change without a reload",
        timeout=20,
    )
    assert browser.execute_script("return window.sameDocument") is True
    look(browser, screenshot, "overview-releasing")

    wait_for(lambda: len(console.completed(PORTAL_C, "enrichment")) >= 3, "enrichment releasing")
    browser.get(queue_page(console, PORTAL_C, "enrichment"))
    for selector in (
        "svg#releases-chart",
        "table#releases-per-minute",
        "dl#settings",
        "table#failures",
        "table#changes",
    ):
        assert browser.find_elements(By.CSS_SELECTOR, selector), f"no {selector}"
    look(browser, screenshot, "queue")

    # Pause with the keyboard alone: Tab reaches the button, Enter presses it.
    tab_to(browser, "pause")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(lambda: browser.find_elements(By.ID, "resume"), "the resume button after pausing")
    assert path_of(browser) == f"/console/portals/{PORTAL_C}/queues/enrichment"
    enrichment = printed(console, PORTAL_C, "enrichment")
    assert (enrichment["paused"], enrichment["state"]) == (True, "paused")

    # HubSpot's side: what was in flight settles, then nothing more of enrichment arrives while
    # background (same portal, same dispatcher) goes on being completed.
    wait_for(
        lambda: printed(console, PORTAL_C, "enrichment")["in_flight"] == 0,
        "enrichment's last releases before the pause completed",
    )
    time.sleep(1)  # the simulator records a completion as it answers the dispatcher
    paused_at = len(console.completed(PORTAL_C, "enrichment"))
    background_at = len(console.completed(PORTAL_C, "background"))
    time.sleep(6)
    assert len(console.completed(PORTAL_C, "enrichment")) == paused_at, "released while paused"
    assert len(console.completed(PORTAL_C, "background")) > background_at, "the engine stopped"
    screenshot("queue-paused")
    changes = browser.find_element(By.CSS_SELECTOR, "table#changes").text
    assert "Olivia Operator" in changes
    assert "pause" in changes.lower()

    # The overview says so too, beside background still releasing.
    browser.get(overview(console, PORTAL_C))
    wait_for(
        lambda: raw(queue_table(browser)["enrichment"]["state"]) == "paused",
        "the overview shows enrichment paused",
    )
    assert raw(queue_table(browser)["background"]["state"]) == "releasing"
    screenshot("overview-paused")

    browser.get(queue_page(console, PORTAL_C, "enrichment"))
    browser.find_element(By.ID, "resume").click()
    wait_for(lambda: browser.find_elements(By.ID, "pause"), "the pause button after resuming")
    wait_for(
        lambda: len(console.completed(PORTAL_C, "enrichment")) > paused_at,
        "enrichment released again after resume",
        timeout=20,
    )
    assert "resume" in browser.find_element(By.CSS_SELECTOR, "table#changes").text.lower()
    enrichment = printed(console, PORTAL_C, "enrichment")
    assert enrichment["paused"] is False


def test_a_viewer_sees_no_pause_form_and_a_forged_pause_is_refused(
    browser: WebDriver, console_processes: ConsoleProcesses
) -> None:
    console = console_processes
    console.put_policy(PORTAL_C, "watched", rate={"limit": 60, "period": "1m"})
    enter_by_link(browser, console.link(PORTAL_C, "viewer"), PORTAL_C)
    browser.get(queue_page(console, PORTAL_C, "watched"))
    assert browser.find_elements(By.CSS_SELECTOR, "dl#settings"), "the viewer sees the queue"
    for selector in ("form#pause-form", "form#resume-form", "#pause", "#resume"):
        assert browser.find_elements(By.CSS_SELECTOR, selector) == [], f"a viewer sees {selector}"

    # The form an operator would have, forged in the viewer's own signed-in browser.
    path = f"/console/portals/{PORTAL_C}/queues/watched/pause"
    assert fetch(browser, "POST", path, {"csrf_token": csrf_token(browser)}) == 403
    watched = printed(console, PORTAL_C, "watched")
    assert watched["paused"] is False


def test_a_user_of_portal_b_gets_403_on_every_page_of_portal_a(
    browser: WebDriver, console_processes: ConsoleProcesses, screenshot: Screenshot
) -> None:
    console = console_processes
    console.put_policy(PORTAL_A, "guarded", rate={"limit": 60, "period": "1m"})
    enter_by_link(browser, console.link(PORTAL_B, "operator"), PORTAL_B)
    token = csrf_token(browser)

    browser.get(overview(console, PORTAL_A))
    assert str(PORTAL_A) in error_text(browser) or "portal" in error_text(browser).lower()
    assert browser.find_elements(By.CSS_SELECTOR, "table#queues") == []
    look(browser, screenshot, "error")

    base = f"/console/portals/{PORTAL_A}"
    for path in (
        base,
        f"{base}/queues/guarded",
        f"{base}/queues.json",
        f"{base}/lookup?q=anything",
    ):
        assert fetch(browser, "GET", path) == 403, path
    assert fetch(browser, "POST", f"{base}/queues/guarded/pause", {"csrf_token": token}) == 403
    guarded = printed(console, PORTAL_A, "guarded")
    assert guarded["paused"] is False


def test_an_expired_or_altered_link_and_a_form_without_its_csrf_token_are_refused(
    browser: WebDriver, console_processes: ConsoleProcesses
) -> None:
    console = console_processes
    console.put_policy(PORTAL_C, "protected", rate={"limit": 60, "period": "1m"})

    expired = console.link(PORTAL_C, "operator", "--expires", "1s")
    time.sleep(2.5)
    browser.get(expired)
    assert error_text(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "table#queues") == []
    assert "expired" in error_text(browser).lower()
    assert fetch(browser, "GET", f"/console/portals/{PORTAL_C}") == 403, "a session from it"

    good = console.link(PORTAL_C, "operator")
    head, _, token = good.partition("?t=")
    altered = f"{head}?t={token[:-4]}{'AAAA' if token[-4:] != 'AAAA' else 'BBBB'}"
    browser.get(altered)
    assert error_text(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "table#queues") == []

    enter_by_link(browser, good, PORTAL_C)
    browser.get(queue_page(console, PORTAL_C, "protected"))
    path = f"/console/portals/{PORTAL_C}/queues/protected/pause"
    assert fetch(browser, "POST", path, {}) == 403
    assert fetch(browser, "POST", path, {"csrf_token": "not-the-token"}) == 403
    # The real form, its hidden token taken out, submitted as a person would.
    browser.execute_script(
        "document.querySelector('form#pause-form input[name=csrf_token]').remove()"
    )
    browser.find_element(By.ID, "pause").click()
    assert "csrf" in error_text(browser).lower()
    protected = printed(console, PORTAL_C, "protected")
    assert protected["paused"] is False


def test_lookup_shows_an_executions_timeline_from_history(
    browser: WebDriver, console_processes: ConsoleProcesses, screenshot: Screenshot
) -> None:
    console = console_processes
    console.put_policy(PORTAL_C, "looked-up", rate={"limit": 600, "period": "1m"})
    console.send(PORTAL_C, "looked-up", 2)
    done = wait_for(lambda: console.completed(PORTAL_C, "looked-up"), "a looked-up completion")
    callback_id = done[0]["callbackId"]

    enter_by_link(browser, console.link(PORTAL_C, "viewer"), PORTAL_C)
    browser.get(f"{overview(console, PORTAL_C)}/lookup")
    field = browser.find_element(By.CSS_SELECTOR, "form#lookup input[name=q]")
    field_id = field.get_attribute("id")
    assert field_id, "the lookup field has no id for its label"
    assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field_id}']"), "no label"
    field.send_keys(callback_id, Keys.ENTER)

    def events() -> int:
        found = len(browser.find_elements(By.CSS_SELECTOR, "ol#timeline > li"))
        if found < 3:  # history lands in batches, off the hot path: ask again
            browser.refresh()
        return found if found >= 3 else 0

    wait_for(events, "received, released and completed in the timeline", timeout=30, every=1)
    assert callback_id in browser.current_url or callback_id in browser.page_source
    timeline = browser.find_element(By.CSS_SELECTOR, "ol#timeline").text.lower()
    assert "completed" in timeline
    look(browser, screenshot, "lookup")
