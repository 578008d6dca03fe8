"""The anchor: the same message app written the common way with stock flask-session 0.8.

The message list lives inside the session; a save appends and reassigns it, so flask-session
rewrites the whole session (one SET of the full value), and because SESSION_REFRESH_EACH_REQUEST
keeps Flask's default (True) every page view with a session does a GET and a full SET too.
CSRF is flask-wtf's CSRFProtect, the usual companion (its secret lives in the session), so the
anchor does the same kind of per-request work as the app. Default msgpack serializer, default
redis-py client (hiredis parser when installed, as for the app). Same template and context.
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import UTC, datetime, timedelta

import redis
from flask import Blueprint, Flask, redirect, request, session, url_for
from flask_session import Session
from flask_wtf.csrf import CSRFProtect, generate_csrf
from werkzeug.wrappers import Response

from bench.pages import LIFETIME_SECONDS, MAX_LENGTH, TEMPLATES, render_page


def create_app() -> Flask:
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=None)
    app.config.update(
        SECRET_KEY=os.environ["SECRET_KEY"],
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis(
            host=os.environ.get("REDIS_HOST", "127.0.0.1"),
            port=int(os.environ.get("REDIS_PORT", "6379")),
            db=int(os.environ.get("REDIS_DB", "0")),
        ),
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=LIFETIME_SECONDS),
    )
    Session(app)
    CSRFProtect(app)
    replica = os.environ.get("REPLICA_NAME") or socket.gethostname()
    bp = Blueprint("messages", __name__)

    @bp.get("/")
    def index() -> str:
        messages = session.get("messages", [])
        return render_page(
            csrf_token=generate_csrf(),
            messages=messages,
            fingerprint=hashlib.sha256(session.sid.encode()).hexdigest()[:12] if messages else None,
            started=session.get("started"),
            replica=replica,
        )

    @bp.post("/persistMessage")
    def persist_message() -> Response:
        message = request.form.get("message", "").strip()
        if message and len(message) <= MAX_LENGTH:
            messages = session.get("messages", [])
            messages.append(message)
            session["messages"] = messages
            session.setdefault("started", datetime.now(UTC).isoformat(timespec="seconds"))
        return redirect(url_for(".index"), code=303)

    @bp.post("/destroy")
    def destroy() -> Response:
        session.clear()
        return redirect(url_for(".index"), code=303)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.register_blueprint(bp)
    return app
