"""The app-wide before- and after-request hooks: one each way (every hook costs a page view a
few microseconds). The form check before CSRF's is the views' own (views.check_raw_form).

Before: the request id and the CSRF token reuse. After: the CSRF token cache and the request
id. The headers that never change are added by ``ConstantHeaders``, around the app.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, request, session
from werkzeug.datastructures import Headers

from . import logs
from .config import Settings
from .csrf import CsrfSecrets

# Set on every response. (No Vary: Cookie: with no-store, no cache keeps a page at all.)
STATIC_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    # Pages carry a CSRF token and the user's messages: never cache them.
    ("Cache-Control", "no-store"),
]
# One year, this host only: subdomains may be other people's sites.
HSTS = ("Strict-Transport-Security", "max-age=31536000")


def register(app: Flask, settings: Settings, csrf_secrets: CsrfSecrets) -> None:
    """Register both hooks."""
    app.before_request(_before_request(csrf_secrets))
    constant_headers = [
        ("X-Served-By", settings.replica_name),
        ("Content-Security-Policy", _content_security_policy(app)),
        *STATIC_HEADERS,
    ]
    # A Secure cookie means the site is served over HTTPS (TLS ends at the load balancer, so
    # the request itself may arrive as plain HTTP): tell browsers to use HTTPS only.
    if settings.session_cookie_secure:
        constant_headers.append(HSTS)
    app.after_request(_response_headers(csrf_secrets, settings.session_cookie_secure))
    app.wsgi_app = ConstantHeaders(app.wsgi_app, constant_headers)  # type: ignore[method-assign]


class ConstantHeaders:
    """WSGI middleware adding the headers that never change to every response of the app.

    In the WSGI headers list rather than through ``response.headers``: werkzeug checks every
    header value it is given, on every response (7 µs of a page view for these five); these
    are checked once, here, when the app is made.
    """

    def __init__(
        self, wsgi_app: Callable[..., Iterable[bytes]], headers: list[tuple[str, str]]
    ) -> None:
        self.wsgi_app = wsgi_app
        self.headers = Headers(headers).to_wsgi_list()  # raises on a value werkzeug refuses

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        constant = self.headers

        def with_constant(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, headers + constant, exc_info)

        return self.wsgi_app(environ, with_constant)


def _before_request(csrf_secrets: CsrfSecrets) -> Callable[[], Any]:
    """The before-request hook, with this app's CSRF token cache."""

    def before_request() -> Any:
        logs.current_request_id()  # first, so that every log line of the request carries it
        csrf_secrets.reuse_token(session._get_current_object())
        return None

    return before_request


def _content_security_policy(app: Flask) -> str:
    """Nothing but this app's own forms and its one inline stylesheet, named by its hash."""
    source = (Path(app.root_path) / "templates" / "base.html").read_text()
    style = re.search(r"<style>(.*?)</style>", source, re.S)
    if style is None:
        raise RuntimeError("app/templates/base.html has no <style> block to allow")
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _response_headers(csrf_secrets: CsrfSecrets, has_hsts: bool) -> Callable[[Any], Any]:
    """The after-request hook."""

    def add_headers(response: Any) -> Any:
        csrf_secrets.remember_token()
        headers = response.headers
        headers["X-Request-ID"] = logs.current_request_id()
        # HTTPS as seen by gunicorn (X-Forwarded-Proto from a trusted proxy, or TLS).
        if not has_hsts and request.is_secure:
            headers.add(*HSTS)
        return response

    return add_headers
