"""The ceiling: the app's page rendered by a bare Flask endpoint with no session store, and the
floor of a save: the form read and answered with a 303.

Same template files (compiled once by Flask's cached Jinja environment, unlike
render_template_string), the same context values the app passes for a session holding 10
messages, same endpoint names, same gunicorn settings: the gap between this row and the app's
is what the session store and the app's own per-request work (CSRF, headers, logging) cost.
"""

from __future__ import annotations

import os
import secrets
import socket

from flask import Blueprint, Flask, redirect, request, url_for
from werkzeug.wrappers import Response

from bench.pages import TEMPLATES, message_text, render_page

# Shaped like the real values (a ~90-character signed token, a 12-hex fingerprint, an ISO
# start time) so the page has the same size; fixed per process as a session's values are.
CSRF_TOKEN = secrets.token_urlsafe(66)
FINGERPRINT = secrets.token_hex(6)
STARTED = "2026-01-01T00:00:00+00:00"


def create_app() -> Flask:
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=None)
    messages = [message_text(i) for i in range(10)]
    replica = os.environ.get("REPLICA_NAME") or socket.gethostname()
    bp = Blueprint("messages", __name__)

    @bp.get("/")
    def index() -> str:
        return render_page(
            csrf_token=CSRF_TOKEN,
            messages=messages,
            fingerprint=FINGERPRINT,
            started=STARTED,
            replica=replica,
        )

    # The floor of a save (row d0): the form read and the 303 the app answers, with no CSRF
    # check and no store.
    @bp.post("/persistMessage")
    def persist_message() -> Response:
        request.form.get("message")
        return redirect(url_for(".index"), code=303)

    @bp.post("/destroy")
    def destroy() -> tuple[str, int]:
        return "", 405

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.register_blueprint(bp)
    return app
