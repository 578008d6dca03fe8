"""A message as stored, against a real gunicorn and a real Valkey: its line breaks normalised
(browsers submit CRLF; a crafted form may send a lone CR), its length counted as the page's
textarea counts it, and the session's byte budget counting what is stored; and a user who
keeps saving keeps a live session cookie. The browser's own side of it is in test_browser.py.
"""

from __future__ import annotations

import time

import pytest
import requests

from app.store import session_key
from tests.support import csrf_token, listed_messages, post_message, session_keys, stored_messages


@pytest.fixture
def visitor():
    """A browser session against a replica: save(text) posts the page's form; save.sid() is
    the session id its cookie holds."""

    def start(replica):
        browser = requests.Session()

        def save(text: str) -> requests.Response:
            return post_message(browser, replica.url, text)

        save.sid = lambda: browser.cookies["session"]  # type: ignore[attr-defined]
        return save

    return start


def test_line_breaks_are_stored_as_lf(valkey, start_replica, visitor):
    save = visitor(start_replica(valkey.port, "messages"))
    for text in ("one\r\ntwo", "three\rfour", "five\nsix", "\r\n seven\r\n\r\n"):
        assert save(text).status_code == 303
    assert len(session_keys(valkey.client())) == 1
    stored = stored_messages(valkey.client, save.sid())
    assert stored == ["one\ntwo", "three\nfour", "five\nsix", "seven"]


def test_the_length_is_counted_as_the_textarea_counts_it(valkey, start_replica, visitor):
    """maxlength counts UTF-16 code units of the value with LF line breaks: 2,000 of them pass
    whatever the line breaks, and an emoji counts two, so 2,000 emoji are 4,000."""
    save = visitor(start_replica(valkey.port, "messages"))
    crlf = "\r\n".join(["x" * 99] * 20)  # 1,980 + 19 line breaks: 1,999 (2,018 sent)
    assert save(crlf + "!").status_code == 303  # 2,000
    assert save("\U0001f600" * 1000).status_code == 303  # 2,000
    refused = save("\U0001f600" * 2000)
    assert refused.status_code == 400
    assert "at most 2,000 characters; this one has 4,000" in refused.text
    assert save(crlf + "!!").status_code == 400  # 2,001
    listed = listed_messages(refused.text)
    assert listed == [crlf.replace("\r\n", "\n") + "!", "\U0001f600" * 1000]


def test_the_byte_budget_counts_what_is_stored(valkey, start_replica, visitor):
    """Two messages of 499 bytes as stored (50 lines) fit a 1,024-byte budget; counted with
    the CR of each line break as sent (548 bytes each) the second would not."""
    save = visitor(start_replica(valkey.port, "messages", SESSION_MAX_BYTES="1024"))
    text = "x" * 9 + "\r\n"
    assert [save(text * 50).status_code for _ in range(2)] == [303, 303]
    refused = save("y" * 30)
    assert refused.status_code == 409  # 998 + 30 bytes: over the budget, as stored
    assert len(session_keys(valkey.client())) == 1
    expected = (text * 50).replace("\r\n", "\n").strip()
    assert stored_messages(valkey.client, save.sid()) == [expected] * 2


def test_a_user_saving_more_often_than_the_refresh_interval_keeps_a_live_cookie(
    valkey, start_replica
):
    """One worker, a save every second for longer than the refresh interval (6 s with a 60 s
    lifetime), each followed by its page, as a browser does. Every save slides the session's
    TTL; the browser's cookie must slide with it. Before, a save slid the TTL without sending
    the cookie and the worker then skipped the page's refresh, so the cookie kept its first
    expiry and the browser dropped a live session when it passed."""
    replica = start_replica(
        valkey.port, "saving", WEB_CONCURRENCY="1", SESSION_LIFETIME_SECONDS="60"
    )
    browser = requests.Session()

    def save(text: str) -> None:
        token = csrf_token(browser.get(f"{replica.url}/", timeout=10).text)
        response = browser.post(
            f"{replica.url}/persistMessage",
            data={"message": text, "csrf_token": token},
            timeout=10,
        )
        assert response.status_code == 200 and text in listed_messages(response.text)

    def cookie_expiry() -> int:
        (cookie,) = [c for c in browser.cookies if c.name == "session"]
        assert cookie.expires is not None
        return cookie.expires

    save("first")
    first = cookie_expiry()
    started = time.monotonic()
    count = 1
    while time.monotonic() - started < 8:  # past the 6 s refresh interval
        time.sleep(1)  # a person's pace: the test is about time passing
        count += 1
        save(f"message {count}")
    assert cookie_expiry() >= first + 6
    assert valkey.client().ttl(session_key(browser.cookies["session"])) > 50
