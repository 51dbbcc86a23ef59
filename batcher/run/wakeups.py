"""Followers waiting for their next poll, by model: woken together when the planner learns
something that moves their polls earlier (a class's first renders seen to end, so that the first
wave need not sit out a guess five times too long), each then planning its poll again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass
class Wakeups:
    """The events of the followers waiting now, by model; `changed` sets them all."""

    woken: int = 0  # followers woken to plan again (a figure for tests and the bench)
    _waiting: dict[Any, set[anyio.Event]] = field(default_factory=dict)

    def changed(self, model: Any) -> None:
        """What is known of `model`'s render times moved its polls earlier: wake its followers."""
        for event in self._waiting.pop(model, set()):
            self.woken += 1
            event.set()

    @contextmanager
    def listening(self, model: Any) -> Iterator[anyio.Event]:
        """An event that is set if `model`'s polls move earlier while the block runs (a poke may
        share it: `PokeBoard.wait`)."""
        event = anyio.Event()
        waiting = self._waiting.setdefault(model, set())
        waiting.add(event)
        try:
            yield event
        finally:
            group = self._waiting.get(model)
            if group is not None:
                group.discard(event)
                if not group:
                    del self._waiting[model]
