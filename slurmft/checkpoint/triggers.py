"""When to save: the policy's step and time intervals, and a save-and-stop signal.

``SaveTriggers`` holds what the decision needs (the last save's step and time, the last
full save's time, a signal that arrived) and nothing else; the manager tells it about every
save and load.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from slurmft.checkpoint.policy import CheckpointPolicy
from slurmft.core.errors import CheckpointError


class SaveTriggers:
    """Save every ``step_interval`` steps, every ``interval`` minutes, and at the step after
    one of the policy's signals (then stop); a save is full every ``full_interval`` minutes."""

    def __init__(self, policy: CheckpointPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self._last_step: int | None = None
        self._last_time = clock()
        self._last_full_time: float | None = None
        self._stop_signal: int | None = None
        self._saved_after_signal = False
        self._old_handlers: dict[int, Any] = {}

    def should_save(self, step: int) -> bool:
        """True at a step boundary where the policy (steps, minutes, a signal) asks to save."""
        if self._stop_signal is not None and not self._saved_after_signal:
            return True
        p = self.policy
        last = self._last_step if self._last_step is not None else 0
        if p.step_interval and step - last >= p.step_interval:
            return True
        if p.interval and self.clock() - self._last_time >= p.interval * 60:
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self._stop_signal is not None

    def request_stop(self, signum: int = signal.SIGUSR1) -> None:
        self._stop_signal = signum
        self._saved_after_signal = False

    def install_signal_handlers(self) -> None:
        """Catch the policy's signals (main thread only); ``restore_signal_handlers`` undoes it."""
        if threading.current_thread() is not threading.main_thread():
            raise CheckpointError("install_signal_handlers must be called from the main thread")
        for name in self.policy.signals:
            sig = getattr(signal, name)
            self._old_handlers[sig] = signal.signal(sig, self._handle_signal)

    def _handle_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.request_stop(signum)

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()

    def want_full(self, now: float) -> bool:
        """Whether a save at ``now`` is a full one (else a diff on the last full save)."""
        fi = self.policy.full_interval
        if not fi or self._last_full_time is None:
            return True
        return now - self._last_full_time >= fi * 60

    def saved(self, step: int, now: float, full: bool) -> None:
        """A save of ``step`` started at ``now``."""
        self._last_step = step
        self._last_time = now
        if full:
            self._last_full_time = now
        if self._stop_signal is not None:
            self._saved_after_signal = True

    def loaded(self, step: int, has_full_base: bool) -> None:
        """A checkpoint of ``step`` was loaded (``has_full_base``: diffs may build on it)."""
        self._last_step = step
        self._last_time = self.clock()
        self._last_full_time = self.clock() if has_full_base else None
