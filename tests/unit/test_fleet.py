"""bench/fleet.py's arithmetic on a known input, worked by hand: the sizing table in
docs/sizing.md is only as right as this."""

from __future__ import annotations

import pytest

from bench.fleet import (
    CacheFigures,
    PodFigures,
    Prices,
    _egress,
    fleet_row,
    render_fleet,
    users_at,
)

# 2 ms of CPU per page view, 5 ms per save; the pod's shape as k8s/ has it.
POD = PodFigures(
    view_app_cpu=0.0019,
    view_proxy_cpu=0.0001,
    save_app_cpu=0.0045,
    save_proxy_cpu=0.0005,
    app_limit=1.0,
    proxy_limit=0.5,
    app_request=0.25,
    proxy_request=0.05,
    workers=2,
    page_bytes=4400,
)
CACHE = CacheFigures(
    session_bytes={10: 2048.0},
    view_commands=2.0,
    view_bytes=1024.0,
    save_commands=6.0,
    save_bytes=512.0,
)


def test_a_pod_at_its_limits_is_held_by_the_busier_container() -> None:
    assert POD.at_limit(0.0) == pytest.approx(1 / 0.0019)  # the app's 1 CPU, not nginx's 0.5
    proxy_bound = PodFigures(**{**POD.__dict__, "view_proxy_cpu": 0.001})
    assert proxy_bound.at_limit(0.0) == pytest.approx(0.5 / 0.001)
    # One save in two: the mean of the two costs.
    assert POD.at_limit(0.5) == pytest.approx(1 / 0.0032)


def test_100k_users() -> None:
    row = fleet_row(100_000, POD, CACHE)
    views, saves = 100_000 / 30, 100_000 / 300
    assert (row.views_per_s, row.saves_per_s) == (pytest.approx(views), pytest.approx(saves))
    assert row.cpu == pytest.approx(views * 0.002 + saves * 0.005)  # 8.33 cores
    # The HPA holds each pod at 70 % of its 300m of requests: 0.21 cores, so 8.33 / 0.21 = 39.7.
    assert (row.pods, row.hpa_min, row.hpa_max) == (40, 40, 80)
    assert row.nodes == 7  # 6 pods of 300m per c6a.large's 1.93 allocatable cores
    assert row.cache_gb == pytest.approx(100_000 * 2 * 2048 / 2**30)
    assert row.commands_per_s == pytest.approx(views * 2 + saves * 6)  # 8,667
    # Past a t3's 5,000 commands/s, and m7g.large is cheaper than r7g.large: a primary and a
    # replica, 730 hours.
    assert row.cache == "2 cache.m7g.large"
    assert row.cache_month == pytest.approx(0.1264 * 2 * 730)
    ecpus_per_s = views * 2 + saves * 6  # 1 KB per view moves no more than its 2 commands
    assert row.serverless_month == pytest.approx(
        100_000 * 2 * 2048 / 2**30 * 0.084 * 730 + ecpus_per_s * 3600 * 730 / 1e6 * 0.0023
    )
    assert fleet_row(1_000, POD, CACHE).serverless_month == pytest.approx(
        0.1 * 0.084 * 730 + (1_000 / 30 * 2 + 1_000 / 300 * 6) * 3600 * 730 / 1e6 * 0.0023
    )  # 4 MB stored: billed as the 100 MB floor
    assert row.connections_per_node == 80 * 2 * 2
    # Bytes decide the LCUs: (4,400 + 600) B per view, 600 per save, per hour, per GB.
    assert row.lcus == pytest.approx((views * 5000 + saves * 600) * 3600 / 1e9)
    assert row.month == pytest.approx(sum(row.costs.values()))
    assert row.costs["cache"] == min(row.cache_month, row.serverless_month)


def test_1k_users_sit_on_the_floor() -> None:
    row = fleet_row(1_000, POD, CACHE)
    assert (row.pods, row.hpa_min, row.hpa_max, row.nodes) == (1, 3, 4, 3)
    assert row.cache == "2 cache.t3.micro"
    assert row.limits_first.startswith("nothing")


def test_the_cache_shards_when_one_node_cannot_take_the_commands() -> None:
    row = fleet_row(3_000_000, POD, CACHE)
    # 260,000 commands/s over 100,000 per primary: 3 shards; 2.3 GiB fit one m7g.large.
    assert row.cache == "cluster: 3 shards of 2 cache.m7g.large"
    assert "cache commands/s (shards)" in row.limits_first
    assert "Redis connections" not in row.limits_first


def test_egress_is_priced_tier_by_tier() -> None:
    prices = Prices()
    assert _egress(100, prices) == 0  # the free 100 GB
    billed = 10_000 * 0.09 + 40_000 * 0.085 + 10_000 * 0.07
    assert _egress(60_100, prices) == pytest.approx(billed)


def test_users_per_pod_count() -> None:
    per_user = 0.002 / 30 + 0.005 / 300
    assert users_at(10, POD) == pytest.approx(10 * 0.21 / per_user, abs=1)  # 25,200


def test_a_command_moving_kilobytes_costs_an_ecpu_per_kilobyte() -> None:
    assert CacheFigures.ecpus(1.0, 3 * 1024) == 3  # one HGETALL of a 3 KB session
    assert CacheFigures.ecpus(4.0, 1024) == 4  # small commands: at least one ECPU each


def test_the_rendered_table_has_a_row_per_size_and_the_hpa_line() -> None:
    text = render_fleet(POD, CACHE, hpa_max=10, users=(1_000, 100_000))
    rows = [line for line in text.splitlines() if line.startswith("| 1")]
    assert [row.split(" | ")[0] for row in rows] == ["| 1,000", "| 100,000"]
    assert "| 40 (40/80) | 7 |" in rows[1]
    assert "one pod serves 2,520 active users" in text
    assert "maxReplicas of 10 is reached at 25,200 active users" in text
