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


def test_a_read_makes_an_entry_the_most_recently_used():
    memory: LRU[str, int] = LRU(2)
    memory.put("a", 1)
    memory.put("b", 2)
    assert memory.get("a") == 1  # read: now the most recent, so "b" goes first
    memory.put("c", 3)
    assert dict(memory) == {"a": 1, "c": 3}
    assert memory.get("b") is None
    assert memory.get("b", 0) == 0


def test_item_assignment_keeps_the_bound():
    memory: LRU[str, int] = LRU(2)
    for i, key in enumerate("abcd"):
        memory[key] = i
    assert dict(memory) == {"c": 2, "d": 3}
