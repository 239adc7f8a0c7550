"""At most one audit event per key and interval, counting the ones held back.

Refusals that anyone can cause at will — a flood of rate-limited chat calls,
cross-site posts, reports from an agent about runs it was never given — are
worth one audit row a minute per culprit, not one per message: the row says
how many were refused since the previous one (``count``). Pure bookkeeping;
the caller writes the event when :meth:`AuditThrottle.admit` says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

DEFAULT_INTERVAL = 60.0
MAX_KEYS = 10_000


@dataclass
class _Entry:
    audited_at: float
    held: int = 0


class AuditThrottle:
    """Per key: the first refusal is audited, then at most one per ``interval`` seconds."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._entries: dict[Hashable, _Entry] = {}

    def admit(self, key: Hashable) -> int | None:
        """Note one refusal for ``key``: how many to report now (this one included), or None to hold it."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.audited_at < self.interval:
            entry.held += 1
            return None
        count = 1 + (entry.held if entry is not None else 0)
        if entry is None and len(self._entries) >= self._max_keys:
            self._prune(now)
        self._entries[key] = _Entry(audited_at=now)
        return count

    def _prune(self, now: float) -> None:
        """Forget keys whose interval is over (their held refusals go unreported); the oldest if none is."""
        stale = [key for key, entry in self._entries.items() if now - entry.audited_at >= self.interval]
        for key in stale or list(self._entries)[: max(1, len(self._entries) // 10)]:
            del self._entries[key]
