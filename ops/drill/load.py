"""The drill's load: Locust users, each one browser session that views its page and now and then
saves a message, every answer recorded.

Importing this module imports Locust, which monkey-patches the standard library for gevent:
import it before anything that opens a socket (``ops.drill.__main__`` does so first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, constant_throughput, task
from locust.env import Environment
from locust.event import Events
from requests.cookies import RequestsCookieJar

from ops.drill.records import NO_ANSWER, Answer, Run, SessionRecord
from ops.page import parse_page

# One slow answer must not hold a user for long; a healthy deployment answers in milliseconds.
REQUEST_TIMEOUT_SECONDS = 10.0
# A failed save is sent again after the answer's Retry-After (the app's 503 says 5), at most this.
RESEND_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """How much load: users (sessions at a time), requests a second in all, every n-th a save."""

    users: int
    rate: float
    save_every: int
    saves_per_session: int
    spawn_rate: float


class Browser(HttpUser):
    """One person with one browser: views the page, and every ``save_every``-th action saves a
    message with the page's form. A save that fails (an error page, no answer, a 429) is sent
    again with the same form, as a user presses Save again: the form's save id makes the app store
    it once. After ``saves_per_session`` acknowledged saves the user starts a new session."""

    abstract = True
    plan: Plan
    drill: Run  # not `run`: a Locust User runs itself with its run() method

    def on_start(self) -> None:
        self.actions = 0
        self.form: dict[str, str] | None = None
        self.record = self._new_session()

    def _new_session(self) -> SessionRecord:
        self.client.cookies = RequestsCookieJar()
        record = SessionRecord(number=len(self.drill.sessions) + 1, cookies=self.client.cookies)
        self.drill.sessions.append(record)
        self.form = None
        return record

    @task
    def act(self) -> None:
        self.actions += 1
        if self.form is not None and self.actions % self.plan.save_every == 0:
            self.save(self.form)
        else:
            self.view()

    def view(self) -> None:
        response = self.client.get("/", name="page", timeout=REQUEST_TIMEOUT_SECONDS)
        if response.status_code == 200:
            page = parse_page(response.text)
            if page.csrf_token and page.save_id:
                self.form = {"csrf_token": page.csrf_token, "save_id": page.save_id}

    def save(self, form: dict[str, str]) -> None:
        if len(self.record.acknowledged) >= self.plan.saves_per_session:
            self.record = self._new_session()
            self.view()
            return
        record = self.record
        text = f"drill {self.drill.tag} s{record.number} #{len(record.sent) + 1} <&> ü"
        record.sent.append(text)
        data = {**form, "message": text}
        self.form = None
        while True:
            response = self.client.post(
                "/persistMessage",
                data=data,
                name="save",
                allow_redirects=False,
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            status = response.status_code
            if status == 303:
                record.acknowledged.append(text)
                break
            if not (status in (NO_ANSWER, 429) or status >= 500) or self.drill.stopping.is_set():
                break  # refused for good (a 4xx), or the drill is ending: not acknowledged
            time.sleep(_retry_after(response))
        self.view()  # the page the redirect leads to, or a fresh form after a refusal


def _retry_after(response: Any) -> float:
    value = response.headers.get("Retry-After", "") if response.status_code else ""
    return min(float(value), RESEND_MAX_SECONDS) if value.isdigit() else 1.0


def _recorder(run: Run) -> Callable[..., None]:
    """Locust's request event, one Answer per request."""

    def record(name: str, start_time: float, response_time: float, response: Any, **_: Any) -> None:
        status = getattr(response, "status_code", NO_ANSWER) or NO_ANSWER
        headers = getattr(response, "headers", None) or {}
        run.answers.append(
            Answer(name, start_time, response_time, status, headers.get("X-Served-By"))
        )

    return record


def drive(url: str, plan: Plan, run: Run, during: Callable[[], None]) -> None:
    """Run the load against ``url`` for as long as ``during`` runs (it sets off the
    disruptions and waits), then stop every user once its current request is answered."""
    events = Events()
    events.request.add_listener(_recorder(run))
    user = type(
        "DrillBrowser",
        (Browser,),
        {
            "abstract": False,
            "host": url,
            "wait_time": constant_throughput(plan.rate / plan.users),
            "plan": plan,
            "drill": run,
        },
    )
    environment = Environment(
        user_classes=[user], events=events, host=url, stop_timeout=2 * REQUEST_TIMEOUT_SECONDS
    )
    runner = environment.create_local_runner()
    run.started = time.time()
    runner.start(plan.users, spawn_rate=plan.spawn_rate)
    try:
        during()
    finally:
        run.stopping.set()
        runner.quit()
        run.load_stopped = time.time()
