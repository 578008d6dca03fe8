"""What users see, what is counted and what is written while Redis is in trouble, against a real
gunicorn (two workers) and a real Valkey: a 503 page that says what is true (trying again soon
helps when Redis is unreachable, not when it is full), a reason for every 503 in the metrics, and
a log that stays a few lines a second however many requests fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import requests

from app.config import Settings
from localservers.ports import free_port
from localservers.processes import child_pids
from localservers.waits import wait_until
from ops.page import parse_page
from tests.support import listed_messages

from .test_metrics import scrape, value

OUTAGE_SECONDS = 10
VISITORS = 8
UNAVAILABLE = "messageapp_unavailable_responses_total"
TRY_AGAIN_SOON = "try again in a few seconds"


# The rate limits as deployed (tests/support.py turns them off for tests that save quickly).
RATE_LIMITS_AS_DEPLOYED = {
    "RATE_LIMIT_SAVES": Settings.rate_limit_saves,
    "RATE_LIMIT_NEW_SESSIONS": Settings.rate_limit_new_sessions,
}


@pytest.fixture
def replica(valkey, start_replica, request):
    """A replica with both workers up, and its metrics port; `request.param`: more of its
    environment."""
    port = free_port()
    env = getattr(request, "param", {})
    started = start_replica(valkey.port, "outage", METRICS_PORT=str(port), **env)
    wait_until(lambda: len(child_pids(started.process.pid)) == 2, 30, "both workers")
    return started, port


class Visitor:
    def __init__(self, base: str) -> None:
        self.base = base
        self.browser = requests.Session()

    def form(self) -> dict[str, str]:
        """The save form's hidden fields, from a fresh page."""
        page = parse_page(self.browser.get(f"{self.base}/", timeout=10).text)
        assert page.csrf_token and page.save_id, "no save form in the page"
        return {"csrf_token": page.csrf_token, "save_id": page.save_id}

    def send(self, form: dict[str, str], text: str) -> requests.Response:
        return self.browser.post(
            f"{self.base}/persistMessage",
            data={**form, "message": text},
            allow_redirects=False,
            timeout=10,
        )

    def save(self, text: str) -> requests.Response:
        return self.send(self.form(), text)


def _app_lines(log: str) -> list[dict]:
    """The app's own JSON lines (not gunicorn's access or error log), complete lines only."""
    lines = [json.loads(line) for line in log[: log.rfind("\n")].splitlines() if line.strip()]
    return [line for line in lines if not line["logger"].startswith("gunicorn")]


def test_an_outage_under_load_writes_a_few_lines_a_second_and_counts_every_503(
    valkey, replica
) -> None:
    replica, metrics_port = replica
    visitors = [Visitor(replica.url) for _ in range(VISITORS)]
    for number, visitor in enumerate(visitors):
        assert visitor.save(f"visitor {number}").status_code == 303
    before = len(_app_lines(replica.log()))
    scraped = scrape(metrics_port)
    statuses: Counter[int] = Counter()
    pages: list[str] = []
    stop = threading.Event()

    def load(visitor: Visitor) -> None:
        while not stop.is_set():
            response = visitor.browser.get(f"{replica.url}/", timeout=10)
            statuses[response.status_code] += 1
            if response.status_code == 503 and len(pages) < 1:
                pages.append(response.text)

    valkey.stop()
    threads = [threading.Thread(target=load, args=(v,)) for v in visitors]
    for thread in threads:
        thread.start()
    time.sleep(OUTAGE_SECONDS)  # the outage under load is what is measured: a fixed span
    stop.set()
    for thread in threads:
        thread.join(30)
    failed = statuses[503]

    def lines_by_logger() -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for line in _app_lines(replica.log())[before:]:
            found.setdefault(line["logger"], []).append(line)
        return found

    def accounted(logger: str) -> int:
        """Requests a logger's lines stand for: each line, and the repeats it reports."""
        return sum(1 + line.get("repeats", 0) for line in lines_by_logger().get(logger, []))

    # Each 503 writes one line answering it (errors.py), written or counted in a line written
    # at most a second later; other kinds of line (the store's own) are limited alike.
    wait_until(lambda: accounted("app.errors") == failed, 10, "every 503 accounted")
    kinds = {
        (line["logger"], line["level"]) for lines in lines_by_logger().values() for line in lines
    }
    written = sum(len(lines) for lines in lines_by_logger().values())
    valkey.start()
    wait_until(lambda: visitors[0].browser.get(f"{replica.url}/", timeout=10).ok, 10, "recovery")
    after = scrape(metrics_port)
    print(
        f"\noutage: {OUTAGE_SECONDS} s, {sum(statuses.values())} requests "
        f"({dict(statuses)}); {written} app lines written for {failed} 503s"
    )
    assert failed > 500  # enough load for the limit to matter
    assert len(kinds) <= 3, kinds
    assert set(statuses) == {503}
    assert TRY_AGAIN_SOON in pages[0]
    # At most one line per kind, per worker, per second (and the first one at once).
    assert written <= len(kinds) * 2 * (OUTAGE_SECONDS + 2), lines_by_logger()
    unreachable = value(after, UNAVAILABLE, reason="unreachable") - value(
        scraped, UNAVAILABLE, reason="unreachable"
    )
    assert unreachable == failed


@pytest.mark.parametrize(
    "replica", [{}, RATE_LIMITS_AS_DEPLOYED], ids=["no rate limits", "rate limits"], indirect=True
)
def test_a_full_cache_answers_its_own_503_and_messages_stay_readable(valkey, replica) -> None:
    """Redis out of memory (noeviction, or nothing left to evict): saves are refused with a page
    saying so (trying again soon cannot help), counted under their own reason; reading works."""
    replica, metrics_port = replica
    owner = Visitor(replica.url)
    form = owner.form()
    assert owner.send(form, "kept").status_code == 303
    newcomer = Visitor(replica.url)
    client = valkey.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # below what it holds: every write is refused
    try:
        refused = [owner.save("one more"), newcomer.save("a first message")]
        # The form stored before, sent again (its answer lost, say): answered as stored, as
        # the save itself was. Before (found by review), the rate limiter's counter, refused
        # first, answered "cannot be saved" for a message that was.
        again = owner.send(form, "kept")
        page = owner.browser.get(f"{replica.url}/", timeout=10)
    finally:
        client.config_set("maxmemory", "0")
    assert [r.status_code for r in refused] == [503, 503]
    assert again.status_code == 303
    for response in refused:
        assert "full" in response.text
        assert TRY_AGAIN_SOON not in response.text
        assert "Retry-After" not in response.headers
    assert page.status_code == 200 and listed_messages(page.text) == ["kept"]
    assert value(scrape(metrics_port), UNAVAILABLE, reason="out_of_memory") == 2

    def logged() -> list[dict]:
        return [line for line in _app_lines(replica.log()) if line.get("reason") == "out_of_memory"]

    # Each logged as an error (the second within a second of the first: counted, or written
    # once that second is over).
    wait_until(lambda: sum(1 + line.get("repeats", 0) for line in logged()) == 2, 10, "the log")
    assert {line["level"] for line in logged()} == {"ERROR"}
    assert owner.save("room again").status_code == 303
