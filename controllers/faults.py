"""Crash points for the chaos suite: a real SIGKILL at an exact place in the code.

Inert unless the environment variable ``CHIFFON_CRASH_AT`` names a point, as
``POINT`` or ``POINT:N`` (crash once the point has been passed by N items: a
batch commit that dispatched five runs counts five). The
chaos tests use them to kill a controller between writing the outbox and
publishing, between publishing and marking published, and between storing a
result and acking it — places a random kill would rarely hit.
"""

from __future__ import annotations

import os
import signal

AFTER_DISPATCH = "after-dispatch"  # run + outbox rows committed, nothing published yet
AFTER_PUBLISH = "after-publish"  # broker confirmed the RunRequest, outbox row not yet marked
AFTER_RESULT = "after-result"  # result stored, the broker delivery not yet acked

_reached: dict[str, int] = {}


def crash_point(name: str, items: int = 1) -> None:
    wanted = os.environ.get("CHIFFON_CRASH_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + items
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
