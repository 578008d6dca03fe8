"""Save latency by session size: single saves timed from one client, the app beside the anchor."""

from __future__ import annotations

from dataclasses import dataclass

from bench.pages import message_text
from bench.plan import Plan
from bench.variants import sessions_with_messages
from localservers.gunicorn import Gunicorn


@dataclass
class SaveLatency:
    variant: str
    held: int
    samples_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def save_latency(plan: Plan, ours: Gunicorn, anchor: Gunicorn) -> list[SaveLatency]:
    """Fill fresh sessions to N messages through the endpoints first, then time single saves
    from one client, round-robin over every (variant, size, session), so machine noise hits all
    cells alike and each session grows by at most save_rounds during the timing."""
    cells = [
        (name, held, sessions_with_messages(server.port, plan.save_sessions, held))
        for held in plan.save_sizes
        for name, server in (("app", ours), ("anchor", anchor))
    ]
    samples: dict[tuple[str, int], list[float]] = {(name, held): [] for name, held, _ in cells}
    for i in range(plan.save_rounds * plan.save_sessions):
        for name, held, clients in cells:
            seconds = clients[i % len(clients)].save(message_text(held + i))
            samples[(name, held)].append(seconds * 1000)
    return [SaveLatency(name, held, values) for (name, held), values in samples.items()]
