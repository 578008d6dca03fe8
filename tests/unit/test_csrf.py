"""The CSRF module's reliance on flask-wtf (the one undocumented slot it uses, and that it
passes a list of keys through), and key rotation with SECRET_KEY_FALLBACKS."""

from flask import session
from flask_wtf.csrf import generate_csrf, validate_csrf
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from app import csrf
from tests.support import csrf_token, listed_messages, session_keys


def test_flask_wtf_returns_the_token_handed_to_it(app):
    with app.test_request_context("/"):
        csrf._flask_wtf_token("a-reused-token")
        assert generate_csrf() == "a-reused-token", (
            "flask-wtf no longer returns the token kept in g.csrf_token: the token reuse in "
            "app/csrf.py (_flask_wtf_token) must follow flask-wtf's new way of caching it"
        )


def test_the_token_flask_wtf_signs_is_the_one_remembered(app):
    with app.test_request_context("/"):
        signed = generate_csrf()
        assert csrf._flask_wtf_token() == signed, (
            "flask-wtf no longer keeps its signed token in g.csrf_token: app/csrf.py "
            "(_flask_wtf_token) must read it from where flask-wtf keeps it now"
        )


OLD_KEY, NEW_KEY = "old-key-0123456789abcdef", "new-key-0123456789abcdef"


def _moved(source, target):
    """The browser's cookies, carried from one app (the old pods) to another (the new)."""
    for name in (csrf.CSRF_COOKIE, "session"):
        cookie = source.get_cookie(name)
        if cookie is not None:
            target.set_cookie(name, cookie.value)
    return target


def test_a_form_rendered_under_the_old_key_saves_after_the_rotation(make_app, fake_redis):
    before = make_app(secret_key=OLD_KEY).test_client()
    token = csrf_token(before.get("/").get_data(as_text=True))
    after = _moved(
        before, make_app(secret_key=NEW_KEY, secret_key_fallbacks=(OLD_KEY,)).test_client()
    )
    response = after.post("/persistMessage", data={"message": "kept", "csrf_token": token})
    assert response.status_code == 303
    assert listed_messages(after.get("/").get_data(as_text=True)) == ["kept"]
    # The cookie only the fallback verified was signed again with the current key, so that
    # the fallback can go without ending this browser's forms.
    resigned = after.get_cookie(csrf.CSRF_COOKIE).value
    assert URLSafeSerializer(NEW_KEY, salt="csrf-cookie").loads(resigned)


def test_flask_wtf_signs_with_the_current_key_and_accepts_the_fallback(make_app):
    """The one thing csrf.init_app relies on: flask-wtf hands WTF_CSRF_SECRET_KEY (a list of
    keys) to itsdangerous as it is."""
    app = make_app(secret_key=NEW_KEY, secret_key_fallbacks=(OLD_KEY,))
    with app.test_request_context("/"):
        session["csrf_token"] = "raw-secret"
        old = URLSafeTimedSerializer(OLD_KEY, salt="wtf-csrf-token").dumps("raw-secret")
        validate_csrf(old)  # raises if flask-wtf no longer passes the list through
        new = generate_csrf()
        assert URLSafeTimedSerializer(NEW_KEY, salt="wtf-csrf-token").loads(new) == "raw-secret", (
            "flask-wtf no longer signs with the last key of WTF_CSRF_SECRET_KEY: "
            "app/csrf.py (init_app) must give it the fallbacks another way"
        )


def test_a_form_rendered_under_a_dropped_key_is_refused_and_nothing_stored(make_app, fake_redis):
    before = make_app(secret_key=OLD_KEY).test_client()
    token = csrf_token(before.get("/").get_data(as_text=True))
    after = _moved(before, make_app(secret_key=NEW_KEY).test_client())
    response = after.post("/persistMessage", data={"message": "lost", "csrf_token": token})
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    assert session_keys(fake_redis) == []


def test_only_unsafe_methods_are_checked_and_each_of_them_is(client, monkeypatch):
    """The CSRF check runs for the methods flask-wtf checks (a page view skips its exemption
    lookup), and still refuses a form without a token."""
    calls = []
    monkeypatch.setattr(csrf.csrf, "protect", lambda **kw: calls.append(kw))
    assert client.get("/").status_code == 200
    assert client.head("/").status_code == 200
    assert calls == []
    client.post("/persistMessage", data={"message": "x"})
    assert calls == [{"apply_exemptions": True}]
    monkeypatch.undo()
    refused = client.post("/persistMessage", data={"message": "no token"})
    assert refused.status_code == 400
    assert "no token" not in listed_messages(client.get("/").get_data(as_text=True))


def test_a_form_another_site_sent_is_refused_without_a_cookie_or_its_text(app, client):
    """A cross-site POST carries no Lax cookie. Before, its refusal was the message page: a new
    CSRF secret whose cookie replaced the victim's (every form the victim had open then
    failed), and the other site's text in this site's textarea. (Found by review.)"""
    forged = {"message": "Call +1-555-0100 to restore your session", "csrf_token": "x"}
    for path in ("/persistMessage", "/destroy"):
        response = app.test_client().post(
            path, data=forged, headers={"Sec-Fetch-Site": "cross-site"}
        )
        page = response.get_data(as_text=True)
        assert response.status_code == 403, path
        assert "sent from another site" in page
        assert "555-0100" not in page
        assert response.headers.getlist("Set-Cookie") == []
    # This site's own page, and a browser that does not say, are not affected.
    for site in ("same-origin", None):
        headers = {} if site is None else {"Sec-Fetch-Site": site}
        token = csrf_token(client.get("/").get_data(as_text=True))
        mine = {"message": f"from {site}", "csrf_token": token}
        assert client.post("/persistMessage", data=mine, headers=headers).status_code == 303
    listed = listed_messages(client.get("/").get_data(as_text=True))
    assert listed == ["from same-origin", "from None"]


def test_over_https_a_form_saves_without_a_referer(make_app):
    """flask-wtf also demands a same-origin Referer on every HTTPS form (WTF_CSRF_SSL_STRICT),
    against cookies a man in the middle plants over plain HTTP. A browser or extension that
    sends no Referer then could never save behind the HTTPS ALB: every try read "the form has
    expired". With SESSION_COOKIE_SECURE the cookies are __Host- ones, which nothing but this
    host over HTTPS can set, so the Referer check guards against nothing more. (Found by
    review.)"""
    client = make_app(session_cookie_secure=True).test_client()
    https = {"base_url": "https://localhost"}
    token = csrf_token(client.get("/", **https).get_data(as_text=True))
    response = client.post(
        "/persistMessage", data={"message": "no referer", "csrf_token": token}, **https
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert listed_messages(client.get("/", **https).get_data(as_text=True)) == ["no referer"]


def test_over_https_with_plain_cookies_the_referer_is_still_demanded(make_app):
    """Without __Host- cookies a man in the middle could plant a CSRF cookie over plain HTTP:
    there flask-wtf's Referer check stays on."""
    client = make_app(session_cookie_secure=False).test_client()
    https = {"base_url": "https://localhost"}
    token = csrf_token(client.get("/", **https).get_data(as_text=True))
    form = {"message": "no referer", "csrf_token": token}
    assert client.post("/persistMessage", data=form, **https).status_code == 400
    assert listed_messages(client.get("/", **https).get_data(as_text=True)) == []
    sent = client.post(
        "/persistMessage", data=form, headers={"Referer": "https://localhost/"}, **https
    )
    assert sent.status_code == 303
