"""The CSRF module's reliance on flask-wtf: the one undocumented slot it uses still works."""

from flask_wtf.csrf import generate_csrf

from app import csrf


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
