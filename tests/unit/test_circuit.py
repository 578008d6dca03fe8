"""The worker's circuit breaker (app/circuit.py): refuse at once for a cool-down after a failure,
then let one call through as the trial."""

from __future__ import annotations

from app.circuit import COOL_DOWN_SECONDS, Circuit


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_closed_it_lets_every_call_through():
    circuit = Circuit(clock=Clock())
    assert all(circuit.allow() for _ in range(3))
    assert not circuit.is_open


def test_after_a_failure_it_refuses_until_the_cool_down_has_passed():
    clock = Clock()
    circuit = Circuit(clock=clock)
    circuit.allow()
    circuit.failed()
    assert circuit.is_open
    clock.now += COOL_DOWN_SECONDS - 0.01
    assert not circuit.allow()


def test_after_the_cool_down_exactly_one_call_is_the_trial():
    clock = Clock()
    circuit = Circuit(clock=clock)
    circuit.failed()
    clock.now += COOL_DOWN_SECONDS
    assert circuit.allow()  # the trial
    assert not circuit.allow()  # another caller meanwhile: refused
    circuit.succeeded()
    assert not circuit.is_open
    assert circuit.allow()


def test_a_failed_trial_opens_it_for_another_cool_down():
    clock = Clock()
    circuit = Circuit(clock=clock)
    circuit.failed()
    clock.now += COOL_DOWN_SECONDS
    assert circuit.allow()
    circuit.failed()
    assert not circuit.allow()
    clock.now += COOL_DOWN_SECONDS
    assert circuit.allow()
