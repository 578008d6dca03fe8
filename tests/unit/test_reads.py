"""app/reads.py's direct reads in-process, on fakeredis: what a page is given, and a demoted
node dropped. The tracked read cache against a real Valkey: tests/system/test_store.py."""

from __future__ import annotations

import fakeredis

from app.reads import DirectReads


def test_a_hash_is_read_as_text_and_bytes_not_utf8_cannot_break_a_page(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    fake_redis.hset("session:{abc}", mapping={"doc": "{}", "m:1": "héllo".encode()})
    fake_redis.hset("session:{abc}", b"m:2", b"\xff\xfe broken")
    fields = DirectReads(fake_redis).fields("session:{abc}")
    assert fields == {"doc": "{}", "m:1": "héllo", "m:2": "\ufffd\ufffd broken"}
    assert DirectReads(fake_redis).fields("session:{none}") == {}


class DemotedNode:
    """A client whose node answers ROLE as a replica; counts the pool's disconnects."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.connection_pool = self

    def execute_command(self, *args: str) -> list:
        return [b"slave", "127.0.0.1", 6380, "connected", 0]

    def disconnect(self) -> None:
        self.disconnects += 1


def test_sync_drops_the_connections_of_a_demoted_node() -> None:
    node = DemotedNode()
    DirectReads(node).sync()  # type: ignore[arg-type]
    assert node.disconnects == 1
    # On a cluster the client follows MOVED itself: no ROLE, nothing dropped.
    DirectReads(node, cluster=True).sync()  # type: ignore[arg-type]
    assert node.disconnects == 1
