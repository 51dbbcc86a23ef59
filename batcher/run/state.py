"""What the loops of a run change and read of each other: why the run stopped, its messages, its
counters, the batch's generation and control word as last read, and the two wake-ups (room in the
budget, the control word). Everything else a loop uses is fixed for the run (`run/context.py`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

import anyio

from ..money import ZERO
from ..states import Control
from .outcomes import StopReason

log = logging.getLogger("batcher.run")


class Signal:
    """Wakes every task waiting on it, then waits afresh (a new event after each wake)."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()
        self._event = anyio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next wake (or `timeout` seconds pass)."""
        if self._event is None:
            self._event = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._event.wait()


@dataclass
class RunState:
    """The run's shared word: every loop may read it; the loops named beside each field write it."""

    stop_reason: StopReason | None = None  # any loop, through `stop`
    messages: list[str] = field(default_factory=list)  # any loop, through `note`
    told: set[str] = field(default_factory=set)  # of them, those said as they happened (`options.on_warning`)
    submitted: int = 0  # the workers
    completed: int = 0  # the downloaders
    # The workers: what this run was charged, less the refunds it recorded (other runners of the
    # batch count theirs: the runners' figures add up to the ledger's)
    spent: Decimal = ZERO
    unreachable: int = 0  # the workers: submissions in a row that could not connect
    generation: int = 0  # the start, then the feeder (`batcher retry` starts a new one)
    control: Control = Control.RUNNING  # the control watcher: the batch's word as it last read it
    room: Signal = field(default_factory=Signal)  # a reservation ended, a refund, a probe ended, a stop
    control_changed: Signal = field(default_factory=Signal)  # the control word changed, or the run stopped

    def note(self, message: str) -> None:
        """A message for the end summary and the log, once each (the jobs' events say which)."""
        if message not in self.messages:
            self.messages.append(message)
            log.warning(message)

    def stop(self, reason: StopReason, message: str) -> None:
        """Stop submitting; the first reason stays unless a later one overrides it."""
        if self.stop_reason is None or (reason.overriding and not self.stop_reason.overriding):
            self.stop_reason = reason
        self.note(message)
        self.room.wake()
        self.control_changed.wake()

    @property
    def submitting_allowed(self) -> bool:
        return self.stop_reason is None

    @property
    def paused(self) -> bool:
        """The batch is paused (`batcher pause`) and this run has not stopped for another reason."""
        return self.control is Control.PAUSED and self.submitting_allowed

    @property
    def may_claim_pending(self) -> bool:
        """New submissions may start: not stopped, not paused."""
        return self.submitting_allowed and self.control is Control.RUNNING

    def obey(self, word: Control) -> Control:
        """The control watcher read `word`: keep it, wake whoever waits on a change; the word before."""
        before, self.control = self.control, word
        if word is not before:
            self.control_changed.wake()
        return before

    async def until_submitting(self) -> None:
        """While the batch is paused, wait: for `resume`, or for the run to stop (`cancel`)."""
        while self.paused:
            await self.control_changed.wait()
