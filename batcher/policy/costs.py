"""What a run learns of the API's charges, to reserve enough: the most each job class was charged,
how far over its estimates each model charges, and which classes have a first submission (a
probe) in flight. Pure: no I/O, exact Decimal credits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..money import MAX_CREDITS, ZERO, credits

JobClass = tuple[Any, ...]  # `ModelSpec.job_class`: the model's id first, then what sets the price

# The most a model's charges are taken to exceed its estimates by (a scale for reservations).
MOST_OVER = Decimal(10) ** 6


def _nothing() -> None:
    return None


@dataclass
class CostMemory:
    """Charges seen by this run. `on_change` is called when a probe ends (whoever waits on it looks again)."""

    on_change: Callable[[], None] = field(default=_nothing, repr=False, compare=False)
    _most: dict[JobClass, Decimal] = field(default_factory=dict)
    _scale: dict[str, Decimal] = field(default_factory=dict)
    _probing: set[JobClass] = field(default_factory=set)

    def charged(self, job_class: JobClass) -> bool:
        """Whether a job of this class was charged in this run."""
        return job_class in self._most

    def most_for(self, job_class: JobClass) -> Decimal:
        """The most a job of this class was charged (0: none was)."""
        return self._most.get(job_class, ZERO)

    def scale_for(self, model: str) -> Decimal:
        """How far over its estimates the model was found to charge, at most (1: never over, or unknown)."""
        return self._scale.get(model, Decimal(1))

    def estimate(self, model: str, job_class: JobClass, listed: Decimal) -> Decimal:
        """What to reserve for a job estimated at `listed`: more, if the API charged more for its
        class; and for the model's other classes, `listed` scaled as the model was found to be low
        (up to the next hundredth: a reservation is never below what the scale says)."""
        scaled = credits(min(listed * self.scale_for(model), MAX_CREDITS), up=True)
        return max(listed, scaled, self.most_for(job_class))

    def learn(self, model: str, job_class: JobClass, estimate: Decimal, charge: Decimal) -> None:
        """A job of `job_class` estimated at `estimate` was charged `charge`."""
        self._most[job_class] = max(self.most_for(job_class), charge)
        over = charge / estimate if estimate > 0 else (MOST_OVER if charge > 0 else Decimal(1))
        self._scale[model] = max(self.scale_for(model), min(over, MOST_OVER))

    def gate(self, model: str, job_class: JobClass) -> JobClass:
        """What a first submission holds back until it is charged: its class once the model has
        been charged for any job, else the whole model (an estimate too low costs one job, not a
        wave per class)."""
        return job_class if model in self._scale else (model,)

    def waits(self, gate: JobClass) -> bool:
        """Whether a submission behind `gate` waits: nothing charged for it, a probe in flight."""
        return gate not in self._most and gate in self._probing

    @contextmanager
    def probe(self, job_class: JobClass, gate: JobClass) -> Iterator[None]:
        """While a job of `job_class` is submitted: the first of its class holds `gate` back."""
        first = not self.charged(job_class)
        if first:
            self._probing.add(gate)
        try:
            yield
        finally:
            if first:
                self._probing.discard(gate)
                self.on_change()
