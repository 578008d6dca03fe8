"""The read cache's one use of a private redis-py name still works with the pinned redis-py."""

import redis

from app.nodes import set_invalidation_handler


def test_the_invalidation_handler_reaches_the_connections_parser():
    connection = redis.Connection(host="127.0.0.1", protocol=3)  # never connected

    def handler(message: list) -> None: ...

    try:
        set_invalidation_handler(connection, handler)
    except AttributeError as exc:
        raise AssertionError(
            "redis-py no longer has connection._parser.set_invalidation_push_handler: "
            "app/nodes.py (set_invalidation_handler) must find the new way to receive "
            f"invalidation pushes, or the read cache would serve stale sessions ({exc})"
        ) from exc
    parser = connection._parser
    assert getattr(parser, "invalidation_push_handler_func", None) is handler, (
        "redis-py's parser no longer keeps the invalidation handler it was given"
    )
