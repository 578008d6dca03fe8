"""What a failed system test's report adds (tests/system/conftest.py): the end of each server
log the test used, found by support.server_log_sections."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from localservers.valkey import Valkey
from tests.support import server_log_sections


def test_the_tail_of_every_log_under_tmp_path_and_on_the_fixtures_servers(tmp_path: Path) -> None:
    own = tmp_path / "test" / "replica-0.log"
    nested = tmp_path / "test" / "valkey" / "valkey.log"
    shared = tmp_path / "module" / "replica-a.log"
    node = tmp_path / "module" / "node-0" / "valkey.log"
    for path in (own, nested, shared, node):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{path.stem} {i}\n" for i in range(100)))
    (tmp_path / "test" / "notes.txt").write_text("not a log")
    server = SimpleNamespace(log_path=shared)
    item = SimpleNamespace(
        funcargs={
            "tmp_path": tmp_path / "test",
            "fleet": [server, SimpleNamespace(log_path=own)],  # own: listed once only
            "one": server,
            "cluster": SimpleNamespace(nodes=[SimpleNamespace(log_path=node)]),
            "gone": SimpleNamespace(log_path=tmp_path / "never-written.log"),
            "port": 6379,
        }
    )
    sections = server_log_sections(item, lines=3)
    assert [title for title, _ in sections] == [
        f"server log {own} (last 3 lines)",
        f"server log {nested} (last 3 lines)",
        f"server log {shared} (last 3 lines)",
        f"server log {node} (last 3 lines)",
    ]
    assert sections[0][1] == "replica-0 97\nreplica-0 98\nreplica-0 99"


def test_a_short_log_is_shown_whole_and_a_test_without_servers_adds_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "gunicorn.log").write_text("started\nstopped\n")
    assert server_log_sections(SimpleNamespace(funcargs={"tmp_path": tmp_path})) == [
        (f"server log {tmp_path / 'gunicorn.log'} (last 2 lines)", "started\nstopped")
    ]
    assert server_log_sections(SimpleNamespace(funcargs={})) == []
    assert server_log_sections(SimpleNamespace()) == []  # an item that never set its fixtures


def test_a_long_log_is_read_from_its_end_only(tmp_path: Path) -> None:
    log = tmp_path / "replica.log"
    log.write_bytes(b"x" * 1_000_000 + b"\n" + b"".join(b"line %d\n" % i for i in range(5)))
    [(_, text)] = server_log_sections(SimpleNamespace(funcargs={"tmp_path": tmp_path}), 60, 100)
    # The last 100 bytes: a cut first line, then the end whole.
    assert text.endswith("line 3\nline 4")
    assert len(text) < 100


def test_a_fixture_that_raises_gives_a_section_not_an_error(tmp_path: Path) -> None:
    class Broken:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(f"no {name} here")

    sections = server_log_sections(SimpleNamespace(funcargs={"server": Broken()}))
    [(title, detail)] = sections
    assert (title, detail.partition("(")[0]) == ("server logs unavailable", "RuntimeError")


def test_a_valkey_names_the_log_it_writes(tmp_path: Path) -> None:
    valkey = Valkey(tmp_path / "valkey")
    valkey.start()
    try:
        [(title, text)] = server_log_sections(SimpleNamespace(funcargs={"valkey": valkey}))
    finally:
        valkey.stop()
    assert title.startswith(f"server log {tmp_path / 'valkey' / 'valkey.log'} ")
    assert "Ready to accept connections" in text
