"""After the load: every session's page read once more, its messages taken for the audit, and the
session destroyed so that the drill leaves nothing in the cache."""

from __future__ import annotations

import time

import requests

from ops.drill.records import SessionRecord
from ops.page import Page, parse_page

REQUEST_TIMEOUT_SECONDS = 10.0
# The load has stopped, but a disruption's tail (a replica resyncing) may still answer 503 briefly.
ATTEMPTS = 5
PAUSE_SECONDS = 2.0


def read_back(url: str, sessions: list[SessionRecord]) -> None:
    """Fill in ``listed`` (None if the page could not be read) and ``destroyed`` per session."""
    for record in sessions:
        if not record.sent:
            continue  # never saved: the app stored no session, there is nothing to read
        with requests.Session() as browser:
            browser.cookies = record.cookies
            page = _page(browser, url)
            if page is None:
                continue
            record.listed = page.messages
            record.destroyed = _destroy(browser, url, page.csrf_token or "")


def _page(browser: requests.Session, url: str) -> Page | None:
    for attempt in range(ATTEMPTS):
        try:
            response = browser.get(f"{url}/", timeout=REQUEST_TIMEOUT_SECONDS)
            if response.status_code == 200:
                return parse_page(response.text)
        except requests.RequestException:
            pass
        if attempt < ATTEMPTS - 1:
            time.sleep(PAUSE_SECONDS)
    return None


def _destroy(browser: requests.Session, url: str, csrf_token: str) -> bool:
    try:
        response = browser.post(
            f"{url}/destroy",
            data={"csrf_token": csrf_token},
            allow_redirects=False,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
    except requests.RequestException:
        return False
    return response.status_code == 303
