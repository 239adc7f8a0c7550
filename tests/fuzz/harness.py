"""How much the fuzz tests try, what they tried, and the guard that turns a hang into a failure.

Every fuzz test asks :func:`fuzz_settings` for its Hypothesis settings and
runs each example inside :func:`trial`, which counts it (accepted, refused
with the documented error, or crashed) for the summary the conftest prints at
the end of the session. Sizes come from the environment (README.md):

* ``CHIFFON_FUZZ_EXAMPLES=N`` — examples per parser/decoder property
  (default: each test's own CI-sized number);
* ``CHIFFON_FUZZ_API_EXAMPLES=M`` — examples per API operation and auth mode
  (default 25, or N // 20 when only ``CHIFFON_FUZZ_EXAMPLES`` is set);
* ``CHIFFON_FUZZ_REPORT=path.json`` — also write the summary there.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, settings

EXAMPLES_ENV = "CHIFFON_FUZZ_EXAMPLES"
API_EXAMPLES_ENV = "CHIFFON_FUZZ_API_EXAMPLES"
REPORT_ENV = "CHIFFON_FUZZ_REPORT"

DEFAULT_API_EXAMPLES = 25
# pytest-timeout's limit for one fuzz test in long mode (pyproject's 120 s stays in the default mode);
# every example also runs under hang_guard, so a hang still fails fast.
LONG_TEST_TIMEOUT = 6 * 3600


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"{name} must be a positive number of examples (got {text!r})")
    return value


def long_mode() -> bool:
    return _env_int(EXAMPLES_ENV) is not None or _env_int(API_EXAMPLES_ENV) is not None


def examples(default: int) -> int:
    """Examples for one parser/decoder property: the CI default, or what the environment asks for."""
    return _env_int(EXAMPLES_ENV) or default


def api_examples() -> int:
    """Examples for one API operation in one auth mode."""
    explicit = _env_int(API_EXAMPLES_ENV)
    if explicit is not None:
        return explicit
    overall = _env_int(EXAMPLES_ENV)
    return max(DEFAULT_API_EXAMPLES, overall // 20) if overall else DEFAULT_API_EXAMPLES


def fuzz_settings(default_examples: int, *, deadline_ms: int) -> settings:
    """Hypothesis settings for one fuzz property.

    The deadline bounds the time of every example (Hypothesis re-runs a slow
    one to make sure before it fails the test); :func:`hang_guard` catches an
    example that never returns. Inputs are large on purpose, so the health
    checks about size and speed are off.
    """
    return settings(
        max_examples=examples(default_examples),
        deadline=timedelta(milliseconds=deadline_ms),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


# --------------------------------------------------------------------------- the hang guard


class HangError(AssertionError):
    """An example ran past its hard limit: the code under test hangs (or nearly so) on it."""


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Fail with :class:`HangError` when the block runs longer than ``seconds`` (SIGALRM; main thread).

    Hypothesis' deadline only judges an example once it returns; this is what
    stops one that would not. pytest-timeout's own alarm (same signal, same
    timer) is kept: if it is due first, its handler runs when it would have,
    and what is left of it is re-armed afterwards.
    """
    started = time.monotonic()
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < outer_delay < seconds

    def expired(signum: int, frame: FrameType | None) -> None:
        if outer_first and callable(previous):
            previous(signum, frame)
            return
        raise HangError(f"the example ran for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, outer_delay if outer_first else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        left = outer_delay - (time.monotonic() - started)
        if outer_delay > 0 and left > 0:  # an outer alarm already due has had its turn
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


# --------------------------------------------------------------------------- what was tried


@dataclass
class Tally:
    """What one fuzz target saw: examples, how each ended, and the time spent in them."""

    examples: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    notes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "slowest_ms": round(self.slowest_ms, 2)}


TALLIES: dict[str, Tally] = {}


@dataclass
class Trial:
    """One example: the test sets ``accepted`` (valid input taken) or leaves it False (clean refusal)."""

    accepted: bool = False
    note: str | None = None


@contextmanager
def trial(target: str, *, limit_seconds: float = 30.0) -> Iterator[Trial]:
    """Run one example of ``target`` under the hang guard and count how it ended.

    Anything that escapes the block — an unexpected exception from the code
    under test or a failed property — counts as a crash and fails the test.
    """
    tally = TALLIES.setdefault(target, Tally())
    outcome = Trial()
    started = time.perf_counter()
    try:
        with hang_guard(limit_seconds):
            yield outcome
    except BaseException:
        tally.crashes += 1
        raise
    finally:
        elapsed = time.perf_counter() - started
        tally.examples += 1
        tally.seconds += elapsed
        tally.slowest_ms = max(tally.slowest_ms, elapsed * 1000)
    if outcome.accepted:
        tally.accepted += 1
    else:
        tally.refused += 1
    if outcome.note:
        tally.notes[outcome.note] = tally.notes.get(outcome.note, 0) + 1


def node_paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path (keys and indexes) of every node of JSON-like ``data``, its root included."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += node_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += node_paths(value, (*prefix, index))
    return found
