"""The session interface: what is stored, when, and what is never trusted."""

from __future__ import annotations

import pickle

import pytest
from flask import session
from itsdangerous import TimestampSigner

from app.csrf import CSRF_COOKIE
from app.replication import NotReplicated
from app.store import KEY_PREFIX, session_key
from tests.support import csrf_token, listed_messages, save, session_keys


class Bomb:
    """Unpickling this would record that pickle ran: the interface must never do it."""

    exploded = False

    def __reduce__(self):
        return (setattr, (Bomb, "exploded", True))


def test_pickled_session_data_is_never_unpickled(client, fake_redis):
    save(client, "mine")
    sid = client.get_cookie("session").value
    fake_redis.hset(session_key(sid), "doc", pickle.dumps({"_permanent": True, "x": Bomb()}))
    page = client.get("/").get_data(as_text=True)
    assert Bomb.exploded is False
    assert listed_messages(page) == []  # treated as no session: a fresh one
    save(client, "again")
    assert client.get_cookie("session").value != sid


def test_session_document_is_json(client, fake_redis):
    save(client, "hello")
    sid = client.get_cookie("session").value
    assert fake_redis.hget(session_key(sid), "doc").startswith(b'{"started":"')


def test_csrf_secret_is_in_its_own_signed_cookie_not_in_redis(client, fake_redis):
    client.get("/")
    assert client.get_cookie(CSRF_COOKIE) is not None
    assert client.get_cookie("session") is None
    assert fake_redis.keys("*") == []
    save(client, "hello")
    sid = client.get_cookie("session").value
    assert b"csrf" not in fake_redis.hget(session_key(sid), "doc")


def test_tampered_csrf_cookie_is_ignored(client):
    token = csrf_token(client.get("/").get_data(as_text=True))
    value = client.get_cookie(CSRF_COOKIE).value
    client.set_cookie(CSRF_COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    response = client.post("/persistMessage", data={"message": "x", "csrf_token": token})
    assert response.status_code == 400


def test_forged_session_cookie_gets_a_fresh_session_never_adopted(client, fake_redis):
    client.set_cookie("session", "attacker-chosen-id")
    page = client.get("/").get_data(as_text=True)
    assert listed_messages(page) == []
    save(client, "mine")
    assert client.get_cookie("session").value != "attacker-chosen-id"
    assert session_keys(fake_redis, "attacker-chosen-id") == []


def test_another_users_session_is_not_reachable_by_a_guessed_cookie(app):
    alice = app.test_client()
    save(alice, "alice's secret")
    mallory = app.test_client()
    mallory.set_cookie("session", alice.get_cookie("session").value[:-1] + "x")
    assert listed_messages(mallory.get("/").get_data(as_text=True)) == []


def test_expired_session_yields_a_fresh_session(client, fake_redis):
    save(client, "soon gone")
    for key in session_keys(fake_redis):
        fake_redis.delete(key)  # what the TTL does
    assert listed_messages(client.get("/").get_data(as_text=True)) == []
    assert save(client, "new start").status_code == 303
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["new start"]


def test_ttl_is_the_lifetime_and_slides(make_app, fake_redis):
    client = make_app(session_lifetime_seconds=600).test_client()
    save(client, "hello")
    keys = session_keys(fake_redis)
    assert len(keys) == 1
    for key in keys:
        assert 590 <= fake_redis.ttl(key) <= 600
        fake_redis.expire(key, 100)  # as if 500 s had passed
    client.application.session_interface.store.refreshed.clear()  # refresh interval elapsed
    client.get("/")
    for key in keys:
        assert fake_redis.ttl(key) > 500


def test_unchanged_session_is_not_rewritten(client, fake_redis):
    save(client, "hello")
    sid = client.get_cookie("session").value
    fake_redis.hset(session_key(sid), "doc", b'{"_permanent":true,"started":"marker"}')
    client.get("/")
    client.get("/")
    assert fake_redis.hget(session_key(sid), "doc") == b'{"_permanent":true,"started":"marker"}'


def test_session_cookie_flags(client):
    save(client, "hello")
    cookie = client.get_cookie("session")
    assert cookie.http_only
    assert cookie.same_site == "Lax"
    assert not cookie.secure
    assert cookie.expires is not None  # permanent: survives a browser restart until expiry


def test_csrf_cookie_flags(client):
    response = client.get("/")
    (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("csrf=")]
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")[1:]}
    assert "httponly" in flags  # page scripts cannot read the secret
    assert flags["samesite"].strip() == "SameSite=Lax"  # not sent on cross-site posts
    assert "secure" not in flags  # plain http in tests; see the next test for https


def signed_in_the_past(monkeypatch, seconds: int) -> None:
    """Tokens signed from now on carry a timestamp ``seconds`` ago (itsdangerous's clock)."""
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - seconds)


@pytest.mark.parametrize(("age", "status"), [(3500, 303), (3700, 400)], ids=["fresh", "expired"])
def test_csrf_tokens_expire_after_an_hour(client, fake_redis, monkeypatch, age, status):
    with monkeypatch.context() as past:
        signed_in_the_past(past, age)
        token = csrf_token(client.get("/").get_data(as_text=True))
    response = client.post("/persistMessage", data={"message": "typed", "csrf_token": token})
    assert response.status_code == status
    if status == 400:
        page = response.get_data(as_text=True)
        assert "This form has expired" in page
        assert ">typed</textarea>" in page  # what was typed is kept, to send again
        assert fake_redis.keys("*") == []


def test_cookies_are_secure_when_configured(make_app):
    client = make_app(session_cookie_secure=True).test_client()
    response = client.get("/", base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]
    token = csrf_token(response.get_data(as_text=True))
    response = client.post(
        "/persistMessage",
        data={"message": "x", "csrf_token": token},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/"},
    )
    assert response.status_code == 303
    assert all("Secure" in c for c in response.headers.getlist("Set-Cookie"))


# The notice on the page a save leads to when it had to start a new session.
ENDED = "Your earlier session had ended (after 30 minutes without a visit, or destroyed in"


def test_save_after_destroy_elsewhere_starts_a_new_session_not_the_old_one(app, fake_redis):
    tab1 = app.test_client()
    save(tab1, "first")
    old_sid = tab1.get_cookie("session").value
    token = csrf_token(tab1.get("/").get_data(as_text=True))
    # Another tab destroys the session while this page is open.
    for key in session_keys(fake_redis):
        fake_redis.delete(key)
    response = tab1.post("/persistMessage", data={"message": "late", "csrf_token": token})
    # The request found no session (it was deleted before it began): a new one, under a new
    # id, is started; the destroyed one stays destroyed, with none of its old messages.
    assert response.status_code == 303
    assert tab1.get_cookie("session").value != old_sid
    assert session_keys(fake_redis, old_sid) == []
    # The page it leads to says why the earlier messages are gone (it said nothing before).
    page = tab1.get(response.headers["Location"]).get_data(as_text=True)
    assert listed_messages(page) == ["late"]
    assert ENDED in page
    # Only that page: the next save, and the same page reloaded without the URL, say nothing.
    assert ENDED not in tab1.get(save(tab1, "later").headers["Location"]).get_data(as_text=True)
    assert ENDED not in tab1.get("/").get_data(as_text=True)


def test_a_first_save_starts_a_session_without_a_notice(client):
    """No cookie named a session: nothing had ended."""
    response = save(client, "first")
    assert response.status_code == 303
    assert ENDED not in client.get(response.headers["Location"]).get_data(as_text=True)


def test_a_save_into_a_session_deleted_mid_request_starts_a_new_one(app, fake_redis, monkeypatch):
    client = app.test_client()
    save(client, "first")
    old_sid = client.get_cookie("session").value
    token = csrf_token(client.get("/").get_data(as_text=True))
    store = app.session_interface.store
    real_save = store.save

    def delete_then_save(sid, *args, **kwargs):
        fake_redis.delete(session_key(sid))  # destroyed in another tab, as this save began
        return real_save(sid, *args, **kwargs)

    monkeypatch.setattr(store, "save", delete_then_save)
    response = client.post("/persistMessage", data={"message": "late", "csrf_token": token})
    monkeypatch.undo()
    # The destroyed session stays destroyed; the message is kept, in a new session.
    assert response.status_code == 303
    assert client.get_cookie("session").value != old_sid
    assert session_keys(fake_redis, old_sid) == []
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert listed_messages(page) == ["late"]
    assert ENDED in page


def test_session_cookie_is_sent_when_created_and_when_the_ttl_slides(client):
    response = save(client, "hello")
    assert any(c.startswith("session=") for c in response.headers.getlist("Set-Cookie"))
    # Within the refresh interval the cookie is not re-sent: its expiry already matches Redis.
    assert not any(c.startswith("session=") for c in client.get("/").headers.getlist("Set-Cookie"))
    client.application.session_interface.store.refreshed.clear()  # the refresh interval elapsed
    refreshed = client.get("/").headers.getlist("Set-Cookie")
    assert any(c.startswith("session=") and "Expires=" in c for c in refreshed)


def test_every_save_slides_the_session_cookie_as_it_slides_the_ttl(client):
    """A save slides the session's TTL (and this worker then skips the next refresh), so its
    answer carries the cookie with the new expiry: else a user saving more often than the
    refresh interval kept the cookie's first expiry, and the browser dropped a live session."""
    save(client, "first")
    for text in ("second", "third"):
        cookies = save(client, text).headers.getlist("Set-Cookie")
        assert any(c.startswith("session=") and "Expires=" in c for c in cookies), cookies


def test_after_a_save_answered_503_the_next_page_slides_the_cookie(client, monkeypatch):
    """A save that no replica confirmed (503) slid the TTL but sends no cookie: it must not
    count as this worker's refresh, or a user whose saves keep failing kept an old cookie."""
    save(client, "first")
    token = csrf_token(client.get("/").get_data(as_text=True))
    store = client.application.session_interface.store
    store.refreshed.clear()  # the refresh interval elapsed since the cookie was sent

    def unconfirmed(acknowledged, *, stored=True):
        raise NotReplicated("no replica confirmed the save in time")

    monkeypatch.setattr(store.replicas, "settle", unconfirmed)
    response = save(client, "second", token)
    assert response.status_code == 503
    assert not any(c.startswith("session=") for c in response.headers.getlist("Set-Cookie"))
    page = client.get("/").headers.getlist("Set-Cookie")
    assert any(c.startswith("session=") and "Expires=" in c for c in page), page


def test_csrf_tokens_are_reused_briefly_and_still_validate(client):
    # The first page sets the CSRF cookie; its token was signed before the browser had a
    # secret to cache it under, so it equals the next one only within the same second.
    client.get("/")
    first = csrf_token(client.get("/").get_data(as_text=True))
    second = csrf_token(client.get("/").get_data(as_text=True))
    assert first == second  # one signature per minute per browser, not per page view
    response = client.post("/persistMessage", data={"message": "x", "csrf_token": second})
    assert response.status_code == 303


def test_a_new_csrf_secret_alone_does_not_rewrite_the_document(client, fake_redis):
    save(client, "hello")
    sid = client.get_cookie("session").value
    fake_redis.hset(session_key(sid), "doc", b'{"_permanent":true,"started":"marker"}')
    client.delete_cookie("csrf")  # flask-wtf makes a new secret on the next page
    client.get("/")
    assert client.get_cookie("csrf") is not None
    assert fake_redis.hget(session_key(sid), "doc") == b'{"_permanent":true,"started":"marker"}'


def test_other_changes_to_the_session_are_stored(app, fake_redis):
    @app.get("/remember")
    def remember():
        session["theme"] = "dark"
        return "ok"

    client = app.test_client()
    save(client, "hello")
    client.get("/remember")
    sid = client.get_cookie("session").value
    assert b'"theme":"dark"' in fake_redis.hget(session_key(sid), "doc")


def test_a_cookie_not_shaped_like_a_session_id_gets_a_fresh_session(client, fake_redis):
    save(client, "mine")
    sid = client.get_cookie("session").value
    # Once a valid id with a suffix naming another key (the message list, in the old layout).
    fake_redis.rpush(f"{KEY_PREFIX}{sid}:messages", b"x")
    for forged in (f"{sid}:messages", sid + "}", "{" + sid, "x" * 43 + "\n", sid[:-1]):
        # Whatever key such a cookie would name is never asked for (here: not even a hash).
        fake_redis.set(session_key(forged), b"not a session")
        client.set_cookie("session", forged)
        response = client.get("/")
        assert response.status_code == 200, forged
        assert listed_messages(response.get_data(as_text=True)) == []


def test_keys_of_the_previous_layout_never_cause_an_error(client, fake_redis):
    sid = "A" * 43
    fake_redis.set(KEY_PREFIX + sid, b'{"_permanent":true,"started":"2026-01-01T00:00:00+00:00"}')
    fake_redis.rpush(f"{KEY_PREFIX}{sid}:messages", b"old message")
    client.set_cookie("session", sid)
    page = client.get("/").get_data(as_text=True)
    assert listed_messages(page) == []  # a fresh session; the old keys expire with their TTL
    assert save(client, "new").status_code == 303
    assert listed_messages(client.get("/").get_data(as_text=True)) == ["new"]
    assert client.get_cookie("session").value != sid


def test_over_https_a_csrf_cookie_planted_under_the_plain_name_is_not_read(make_app):
    """A sibling subdomain can set a cookie for the parent domain, which the browser sends here
    too (and a sibling is the same site, so Lax cookies go with its forms). Before, the CSRF
    secret's cookie was plain ``csrf`` over HTTPS as well: one planted with the attacker's own
    secret made the attacker's token valid, and the attacker saved into the victim's session.
    (Found by review.)"""
    app = make_app(session_cookie_secure=True)
    https = {"base_url": "https://localhost", "headers": {"Referer": "https://localhost/"}}

    def form(client) -> str:
        return csrf_token(client.get("/", base_url="https://localhost").get_data(as_text=True))

    victim = app.test_client()
    mine = {"message": "mine", "csrf_token": form(victim)}
    assert victim.post("/persistMessage", data=mine, **https).status_code == 303
    attacker = app.test_client()
    token = form(attacker)
    (planted,) = [c for c in ("csrf", "__Host-csrf") if attacker.get_cookie(c, domain="localhost")]
    victim.set_cookie("csrf", attacker.get_cookie(planted, domain="localhost").value)
    forged = {"message": "planted", "csrf_token": token}
    assert victim.post("/persistMessage", data=forged, **https).status_code == 400
    page = victim.get("/", base_url="https://localhost").get_data(as_text=True)
    assert listed_messages(page) == ["mine"]
    assert victim.get_cookie("__Host-csrf", domain="localhost") is not None


def test_over_https_the_cookie_is_host_only(make_app):
    client = make_app(session_cookie_secure=True).test_client()
    page = client.get("/", base_url="https://localhost").get_data(as_text=True)
    response = client.post(
        "/persistMessage",
        data={"message": "x", "csrf_token": csrf_token(page)},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/"},
    )
    assert response.status_code == 303
    (cookie,) = [c for c in response.headers.getlist("Set-Cookie") if "session=" in c]
    assert cookie.startswith("__Host-session=")
    assert "Secure" in cookie
    assert "Path=/" in cookie
    assert "Domain" not in cookie
    # A cookie planted under the plain name (e.g. by a sibling subdomain) is not read.
    planted = make_app(session_cookie_secure=True).test_client()
    planted.set_cookie("session", client.get_cookie("__Host-session").value)
    page = planted.get("/", base_url="https://localhost").get_data(as_text=True)
    assert listed_messages(page) == []


def saved_cookie(response) -> str | None:
    found = [c for c in response.headers.getlist("Set-Cookie") if c.split("=")[0].endswith("saved")]
    return found[0] if found else None


def test_a_save_tells_the_next_page_how_many_messages_it_must_show(client):
    """For the page the save redirects to, wherever it is served: a worker whose cached copy
    holds fewer messages reads the session again (sessions.py)."""
    assert saved_cookie(save(client, "first")) is None  # a new session: cached nowhere
    cookie = saved_cookie(save(client, "second"))
    assert cookie is not None and cookie.startswith("saved=2; ")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "max-age=10", "path=/", "samesite=lax"} <= flags
    assert "secure" not in flags
    token = csrf_token(client.get("/").get_data(as_text=True))
    response = client.post("/destroy", data={"csrf_token": token})
    assert response.status_code == 303
    assert saved_cookie(response).startswith("saved=; ")  # deleted with the session
    assert client.get_cookie("saved") is None


@pytest.mark.parametrize(
    ("cookie", "url", "seen"),
    [
        (None, "", 0),
        ("3", "", 3),
        (None, "?saved=4", 4),
        ("3", "?saved=4", 4),  # a tab whose answer came first: its own number is the URL's
        ("5", "?saved=4", 5),
        ("3", "?saved=abc", 3),
        ("3", "?saved=" + "9" * 20, 3),
        ("3", "?saved=4&saved=9", 4),
    ],
)
def test_a_page_must_show_what_the_saved_cookie_or_its_url_says_was_saved(app, cookie, url, seen):
    """The page a save redirects to carries the save's number in its URL: the cookie is shared
    by every tab, and two tabs' answers arriving in the other order can lower it."""
    headers = {"Cookie": f"saved={cookie}"} if cookie is not None else {}
    with app.test_request_context(f"/{url}", headers=headers):
        assert session.seen_saved == seen


def test_a_query_string_that_is_not_utf8_is_no_count_and_no_error(client):
    """WSGI hands the query string over as latin-1 text; werkzeug's parser decodes it as UTF-8
    and raises on a byte that is not (gunicorn refuses such a request line today; another
    server might pass it)."""
    save(client, "first")
    save(client, "second")
    page = client.get("/", environ_overrides={"QUERY_STRING": "saved=\xff"})
    assert page.status_code == 200
    assert listed_messages(page.get_data(as_text=True)) == ["first", "second"]


@pytest.mark.parametrize("value", ["abc", "-1", "9" * 20, "\uff11\uff12", "1e3", ""])
def test_a_saved_cookie_that_is_no_count_is_ignored(client, value):
    save(client, "first")
    save(client, "second")
    client.set_cookie("saved", value)
    page = client.get("/")
    assert page.status_code == 200
    assert listed_messages(page.get_data(as_text=True)) == ["first", "second"]
    # Read as no count at all: the next save's cookie holds its own number, not a larger one.
    assert saved_cookie(save(client, "third")).startswith("saved=3; ")


def test_the_saved_cookie_keeps_the_highest_count_and_goes_with_its_session(client, fake_redis):
    save(client, "first")
    token = csrf_token(client.get("/").get_data(as_text=True))
    old_form = {"message": "second", "csrf_token": token, "save_id": "s" * 22}
    assert client.post("/persistMessage", data=old_form).status_code == 303
    save(client, "third")
    # The form of message 2 sent again (another tab): stored once, and the count stays at 3.
    response = client.post("/persistMessage", data=old_form)
    assert response.status_code == 303
    assert saved_cookie(response).startswith("saved=3; ")
    # The session expires: the next save starts a new one, whose count starts again.
    fake_redis.delete(session_key(client.get_cookie("session").value))
    response = save(client, "new")
    assert response.status_code == 303
    assert saved_cookie(response).startswith("saved=; ")
    assert client.get_cookie("saved") is None


def test_over_https_the_saved_cookie_is_host_only(make_app):
    client = make_app(session_cookie_secure=True).test_client()
    for text in ("first", "second"):
        page = client.get("/", base_url="https://localhost").get_data(as_text=True)
        response = client.post(
            "/persistMessage",
            data={"message": text, "csrf_token": csrf_token(page)},
            base_url="https://localhost",
            headers={"Referer": "https://localhost/"},
        )
        assert response.status_code == 303
    cookie = saved_cookie(response)
    assert cookie is not None and cookie.startswith("__Host-saved=2; ")
    assert "Secure" in cookie and "Domain" not in cookie
    # Deleted as set: a browser ignores a __Host- cookie's deletion without Secure.
    page = client.get("/", base_url="https://localhost").get_data(as_text=True)
    response = client.post(
        "/destroy",
        data={"csrf_token": csrf_token(page)},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/"},
    )
    assert response.status_code == 303
    deleted = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-")]
    assert sorted(c.split("=")[0] for c in deleted) == ["__Host-saved", "__Host-session"]
    assert all("Max-Age=0" in c and "Secure" in c and "Path=/" in c for c in deleted)
