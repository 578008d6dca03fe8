"""The bounded per-worker memories: a client cannot make them grow without limit."""

from app.lru import LRU


def test_the_least_recently_stored_entry_goes_first():
    memory: LRU[str, int] = LRU(2)
    memory.put("a", 1)
    memory.put("b", 2)
    memory.put("a", 3)  # stored again: now the most recent
    memory.put("c", 4)
    assert dict(memory) == {"a": 3, "c": 4}
    assert len(memory) == 2
