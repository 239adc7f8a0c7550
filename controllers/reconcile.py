"""What a reconcile pass returns, and the errors that say what happens next.

Like controller-runtime's ``reconcile.Result`` and Flux's typed errors:

* return ``Result()`` — converged; nothing to do until something changes;
* return ``Result(requeue_after=s)`` — look again in ``s`` seconds (a timed wait);
* raise ``Waiting`` — a gate is closed (approval, capacity, dependency); look again
  after its delay, without growing the error backoff;
* raise ``Stalled`` — only a person can fix this; do not retry until the key is
  added again (a new commit, an approval, a heartbeat);
* raise anything else — a failure; retry with per-key exponential backoff.

A reconciler either returns a result or raises, never both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class ReconcileError(Exception):
    """Base for the typed outcomes; ``reason`` becomes a condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Stalled(ReconcileError):  # noqa: N818 - the names STYLE.md and Flux use
    """A person must act; no automatic retry."""


class Waiting(ReconcileError):  # noqa: N818 - the names STYLE.md and Flux use
    """A gate is closed; look again after ``requeue_after`` seconds."""

    def __init__(self, reason: str, message: str, requeue_after: float) -> None:
        super().__init__(reason, message)
        self.requeue_after = requeue_after
