"""What one benchmark run measures, and for how long: the published run and the smoke run."""

from __future__ import annotations

from dataclasses import dataclass

# Messages in the session whose page every page-view row loads.
PAGE_MESSAGES = 10


@dataclass(frozen=True)
class Plan:
    """The published run by default: 1/100/500 messages held, a 20 s fault run (stop 5 s, start
    10 s). 128 save sessions against 16 connections keep each session growing slowly and two
    saves rarely racing on one session."""

    duration: int
    repeats: int
    warmup: int = 2
    pool_sessions: int = 128
    save_sizes: tuple[int, ...] = (1, 100, 500)
    save_sessions: int = 8
    save_rounds: int = 25
    counted_requests: int = 100
    fault_seconds: int = 20
    fault_stop_at: float = 5.0
    fault_start_at: float = 10.0
    slow_headers: int = 200
    slow_bodies: int = 50

    @classmethod
    def full(cls, duration: int, repeats: int) -> Plan:
        return cls(duration, repeats)

    @classmethod
    def smoke(cls, duration: int, repeats: int) -> Plan:
        """Every step once with tiny sizes: proves the harness end to end in ~20 s (CI)."""
        return cls(
            duration,
            repeats,
            warmup=0,
            pool_sessions=8,
            save_sizes=(1, 20, 50),
            save_sessions=2,
            save_rounds=3,
            counted_requests=10,
            fault_seconds=4,
            fault_stop_at=1.0,
            fault_start_at=2.0,
            slow_headers=20,
            slow_bodies=5,
        )
