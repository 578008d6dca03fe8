"""Folding a dead worker's metrics files: what a scrape reads is the same before and after.

The files are written by prometheus_client's own multiprocess code, in-process (its value
class for a made-up pid), and read back by its public MultiProcessCollector, so a change in
its file format or in MmapedDict, which ``metrics_server.add_into`` uses, fails here. The same
over 150 real worker restarts: tests/system/test_metrics.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from app import metrics_server


@pytest.fixture
def worker(monkeypatch, tmp_path):
    """Record as the worker with a given pid would: (pid, saves, seconds observed)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    def record(pid: int, saves: int, seconds: list[float]) -> None:
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
        counter = Counter("t_saves", "Saves.", ["route"], registry=None)
        histogram = Histogram("t_seconds", "Time.", buckets=(0.1, 1.0), registry=None)
        counter.labels("/").inc(saves)
        counter.labels("/other").inc(1)
        for second in seconds:
            histogram.observe(second)

    yield record
    values.close_all_multiprocess_files()


def scraped(directory: Path) -> dict[tuple[str, tuple], float]:
    collector = MultiProcessCollector(None, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_folding_dead_workers_changes_no_total(worker, tmp_path):
    worker(101, 3, [0.05, 0.5])
    worker(102, 4, [2.0])
    worker(103, 5, [0.05])  # alive throughout
    before = scraped(tmp_path)
    assert before[("t_saves_total", (("route", "/"),))] == 12
    assert before[("t_seconds_bucket", (("le", "0.1"),))] == 2
    assert before[("t_seconds_bucket", (("le", "+Inf"),))] == 4
    metrics_server.worker_exited(tmp_path, 101)
    metrics_server.worker_exited(tmp_path, 102)  # added to what 101 left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_103.db",
        "counter_dead.db",
        "histogram_103.db",
        "histogram_dead.db",
    ]
    assert scraped(tmp_path) == before


def test_adding_into_nothing_copies(worker, tmp_path):
    worker(201, 2, [0.5])
    before = scraped(tmp_path)
    total = tmp_path / "counter_dead.db"
    metrics_server.add_into(total, tmp_path / "counter_201.db")
    (tmp_path / "counter_201.db").unlink()
    assert scraped(tmp_path) == before
    assert not list(tmp_path.glob("*.partial"))


def test_a_file_a_starting_worker_has_only_just_made_is_left_out(worker, tmp_path):
    """MmapedDict opens a new file before it sizes it: a scrape then, or a worker killed then,
    meets an empty file, which prometheus_client's reader cannot read."""
    worker(301, 2, [0.5])
    expected = scraped(tmp_path)
    (tmp_path / "counter_302.db").touch()  # worker 302, starting
    summed = metrics_server.WorkerFiles(tmp_path).collect()
    as_scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in summed for s in f.samples
    }
    assert as_scraped == expected
    metrics_server.worker_exited(tmp_path, 302)  # killed before it counted anything
    assert not (tmp_path / "counter_302.db").exists()
    assert scraped(tmp_path) == expected


def test_a_file_that_cannot_be_folded_stays_and_the_master_goes_on(worker, tmp_path, caplog):
    worker(401, 2, [0.5])
    broken = tmp_path / "counter_402.db"
    broken.write_bytes((1 << 20).to_bytes(4, "little") + bytes(60))  # says 1 MiB is used
    metrics_server.worker_exited(tmp_path, 402)  # raises nothing: a hook error ends gunicorn
    assert broken.exists()
    assert "could not fold the metrics file counter_402.db" in caplog.text
