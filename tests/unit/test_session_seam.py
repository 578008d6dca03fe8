"""The session interface depends on flask-session's public API only."""

import inspect
import re

from flask.sessions import SessionInterface
from flask_session.base import ServerSideSession
from flask_session.redis import RedisSessionInterface

from app.sessions import MessageSession, MessageSessionInterface


def _private(cls: type) -> set[str]:
    # _abc_impl: abc's bookkeeping, present on every abstract class
    return {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")} - {"_abc_impl"}


def test_no_method_shadows_a_private_name_of_flask_session():
    ours = {n for n in vars(MessageSessionInterface) if not n.startswith("__")}
    clashes = ours & (_private(RedisSessionInterface) - _private(SessionInterface))
    assert not clashes, (
        f"app/sessions.py defines {sorted(clashes)}, private to flask-session's "
        "RedisSessionInterface: rename them, so that flask-session's own code never runs ours"
    )
    session_clashes = {n for n in vars(MessageSession) if not n.startswith("__")} & _private(
        ServerSideSession
    )
    assert not session_clashes, f"MessageSession shadows flask-session's {sorted(session_clashes)}"


def test_no_private_helper_of_flask_session_is_called():
    source = inspect.getsource(MessageSessionInterface)
    private = _private(RedisSessionInterface) - _private(SessionInterface)
    used = {n for n in private if re.search(rf"\b{n}\b", source)}
    assert not used, (
        f"app/sessions.py uses flask-session's private {sorted(used)}: use its public API, "
        "or write the helper here"
    )


def test_the_public_constructor_accepts_what_the_app_passes():
    params = inspect.signature(RedisSessionInterface.__init__).parameters
    for name in ("app", "client", "key_prefix", "use_signer", "permanent", "sid_length"):
        assert name in params, f"flask-session's RedisSessionInterface() no longer takes {name}"
    assert "serialization_format" in params, (
        "flask-session's RedisSessionInterface() no longer takes serialization_format"
    )
