"""A person in a browser: headless Chromium (Debian's) driven by Playwright, against gunicorn."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, Page, expect

from localservers.gunicorn import Gunicorn
from localservers.haproxy import Haproxy
from tests.support import session_keys, stored_messages

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One Chromium for the module: each test's ``new_page`` opens a context of its own (its own
    cookies and storage), as a new incognito window would."""
    from playwright.sync_api import sync_playwright

    # Chromium and Playwright write caches under HOME; keep them in the module's folder.
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=CHROMIUM, args=ARGS, timeout=30_000
            )
            try:
                yield instance
            finally:
                instance.close()


def submit(page: Page, button: str) -> None:
    """Click a form button and wait until the page it leads to has loaded.

    The form posts and the app answers 303 to ``/`` (or ``/?saved=<n>``), where the page
    already is, or nearly: waiting for the URL would return at once. Waiting for the navigation
    the click starts does not.
    """
    with page.expect_navigation(wait_until="load"):
        page.click(f"text={button}")


def test_type_save_reload_destroy(browser, valkey, start_replica, tmp_path):
    replica = start_replica(valkey.port, "browser-replica")
    page = browser.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{replica.url}/")
    expect(page.locator("#served-by")).to_have_text("browser-replica")
    # The inline stylesheet is allowed by the Content-Security-Policy's hash, so it applies.
    assert page.eval_on_selector("main", "m => getComputedStyle(m).maxWidth") == "672px"

    page.fill("textarea[name=message]", "Hello from <Chromium> & co")
    submit(page, "Save Message")
    expect(page.locator("li.message")).to_have_text(["Hello from <Chromium> & co"])
    fingerprint = page.locator("#session-fingerprint").inner_text()
    assert len(fingerprint) == 12

    page.fill("textarea[name=message]", "second")
    submit(page, "Save Message")
    expect(page.locator("li.message")).to_have_text(["Hello from <Chromium> & co", "second"])
    page.reload()
    expect(page.locator("li.message")).to_have_text(["Hello from <Chromium> & co", "second"])
    expect(page.locator("#session-fingerprint")).to_have_text(fingerprint)
    page.screenshot(path=str(tmp_path / "messages.png"))

    submit(page, "Destroy Session")
    expect(page.locator("#session-fingerprint")).to_have_text("none")
    expect(page.locator("li.message")).to_have_count(0)
    assert session_keys(valkey.client()) == []
    assert problems == []  # no CSP violation or script error along the way


def test_a_refused_message_shows_the_reason_and_keeps_the_list(browser, valkey, start_replica):
    replica = start_replica(valkey.port, "browser-replica", MESSAGE_MAX_LENGTH="10")
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{replica.url}/")
    page.fill("textarea[name=message]", "short")
    submit(page, "Save Message")
    expect(page.locator("li.message")).to_have_text(["short"])
    # The textarea's maxlength stops typing past the limit; a crafted post still gets a reason.
    page.eval_on_selector("textarea", "t => t.removeAttribute('maxlength')")
    page.fill("textarea[name=message]", "far too long for ten")
    submit(page, "Save Message")
    expect(page.locator("#error")).to_contain_text("at most 10 characters")
    expect(page.locator("li.message")).to_have_text(["short"])
    # What was typed is still there to shorten, not lost.
    expect(page.locator("textarea[name=message]")).to_have_value("far too long for ten")


def test_a_message_as_long_as_the_page_allows_is_saved(browser, valkey, start_replica):
    """2,000 characters as the textarea counts them (its maxlength): line breaks count one
    (the browser submits each as CRLF), a character outside the BMP (an emoji) two. The page
    lets no more be typed, and what it let through is saved, with LF line breaks."""
    replica = start_replica(valkey.port, "browser-replica")
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{replica.url}/")
    lines = ["\U0001f600" * 5 + "a" * 180] + ["b" * 180] * 10  # 190 + 10 x 180 units, 10 breaks
    text = "\n".join(lines)
    page.focus("textarea[name=message]")
    page.keyboard.insert_text(text)
    page.keyboard.type("zz\n")  # past the limit: the textarea takes none of it
    assert page.eval_on_selector("textarea", "t => t.value.length") == 2000
    assert page.locator("textarea[name=message]").input_value() == text
    submit(page, "Save Message")
    expect(page.locator("#error")).to_have_count(0)
    assert len(session_keys(valkey.client())) == 1
    (sid,) = [c["value"] for c in page.context.cookies() if c["name"] == "session"]
    assert stored_messages(valkey.client, sid) == [text]


OLD_KEY, NEW_KEY = "old-secret-key-0123456789abcdef", "new-secret-key-0123456789abcdef"


@dataclass
class Rollout:
    """One load balancer target (haproxy) whose replica is replaced, as a rollout replaces pods,
    and a browser page opened through it while the first replica (SECRET_KEY=OLD_KEY) served."""

    proxy: Haproxy
    page: Page
    start: Callable[..., Gunicorn]
    valkey_port: int
    serving: Gunicorn

    def replace(self, name: str, **env: str) -> None:
        new = self.start(self.valkey_port, name, **env)
        reply = self.proxy.command(f"set server replicas/app addr 127.0.0.1 port {new.port}")
        assert "changed" in reply, reply
        self.serving.stop()
        self.serving = new


@pytest.fixture
def rollout(browser, valkey, start_replica, tmp_path) -> Iterator[Rollout]:
    old = start_replica(valkey.port, "old-key", SECRET_KEY=OLD_KEY)
    proxy = Haproxy(tmp_path, {"app": old.port})
    proxy.start()
    try:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{proxy.url}/")
        yield Rollout(proxy, page, start_replica, valkey.port, old)
    finally:
        proxy.stop()


def test_a_form_rendered_before_a_key_rotation_saves_after_it(rollout: Rollout) -> None:
    """SECRET_KEY rotated (the old key a fallback), then the fallback dropped: a form open
    through both steps saves each time, in the page the person already has."""
    page = rollout.page
    page.fill("textarea[name=message]", "typed before the rotation")
    rollout.replace("rotated", SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=OLD_KEY)
    submit(page, "Save Message")
    expect(page.locator("#served-by")).to_have_text("rotated")
    expect(page.locator("li.message")).to_have_text(["typed before the rotation"])

    # An hour later the old key goes; the page open since the last save still works.
    page.fill("textarea[name=message]", "typed before the old key was dropped")
    rollout.replace("dropped", SECRET_KEY=NEW_KEY)
    submit(page, "Save Message")
    expect(page.locator("#served-by")).to_have_text("dropped")
    expect(page.locator("li.message")).to_have_text(
        ["typed before the rotation", "typed before the old key was dropped"]
    )


def test_a_form_rendered_under_a_dropped_key_gets_a_clear_400_and_nothing_is_stored(
    rollout: Rollout, valkey
) -> None:
    page = rollout.page
    page.fill("textarea[name=message]", "typed under a key that is gone")
    rollout.replace("new-key-only", SECRET_KEY=NEW_KEY)
    with page.expect_navigation(wait_until="load") as refused:
        page.click("text=Save Message")
    assert refused.value.status == 400
    expect(page.locator("#error")).to_contain_text("This form has expired")
    expect(page.locator("li.message")).to_have_count(0)
    # What was typed is still in the form, to send again.
    expect(page.locator("textarea[name=message]")).to_have_value("typed under a key that is gone")
    assert session_keys(valkey.client()) == []
    # Sent again from the page the refusal gave, it saves.
    submit(page, "Save Message")
    expect(page.locator("li.message")).to_have_text(["typed under a key that is gone"])


def test_back_after_a_save_does_not_offer_the_saved_text_again(browser, valkey, start_replica):
    """Back re-fetches the page (no-store), with a new form and save id; Chromium used to
    restore the textarea's old text into it, so pressing Save stored the message twice (found
    by review: ['alpha', 'beta', 'beta']). The form asks for no restoring (autocomplete off)."""
    replica = start_replica(valkey.port, "browser-replica")
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{replica.url}/")
    for text in ("alpha", "beta"):
        page.fill("textarea[name=message]", text)
        submit(page, "Save Message")
    expect(page.locator("li.message")).to_have_text(["alpha", "beta"])
    page.go_back(wait_until="load")
    expect(page.locator("li.message")).to_have_text(["alpha", "beta"])
    expect(page.locator("textarea[name=message]")).to_have_value("")
