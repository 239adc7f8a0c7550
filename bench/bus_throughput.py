"""Publish-with-confirm throughput: Chiffon's RabbitMQ bus over raw aio-pika, same broker, same messages.

    python -m bench.bus_throughput [--quick] [--messages N] [--rounds N] [--json FILE]

Both sides publish the same ``N`` RunRequest envelopes (one body size,
printed with the figure) to a durable quorum queue of their own on the
broker at ``$CHIFFON_BENCH_AMQP_URL`` (…, as the other benches), persistent,
``mandatory``, each publish waiting for the broker's confirm:

* **Chiffon**: ``open_bus(url, prefix=…)`` → ``AmqpBus.declare`` →
  ``AmqpBus.publish(queue, envelope)``: the product's path, envelope encoding
  (pydantic → JSON), message properties, the retry wrapper and its timeout
  included;
* **raw aio-pika**: what a person writes with aio-pika alone —
  ``connect_robust``, one channel with ``publisher_confirms=True``, a queue
  declared with the same arguments (``queue_arguments``, so both are quorum
  queues with the same dead-letter settings), ``default_exchange.publish`` of
  a ``Message`` built from the already-encoded body.

Two ways to publish, both sides alike:

* **batched**: ``asyncio.gather`` over batches of 100, as the controller's
  outbox relay publishes dispatched RunRequests (frames leave in order, the
  confirms come back as a stream) — the figure;
* **sequential**: one publish at a time, each awaiting its confirm, as an
  agent reports (RunAccepted before a run starts) — reported beside it, with
  a quarter as many messages (each waits for the broker's disk).

Rounds alternate which side goes first (as ``bench.agent_overhead`` does),
each queue is purged after each round so neither grows, and the figure is the
median over rounds of (Chiffon seconds / raw seconds) for the same N messages
— a time ratio: 1.0 is no overhead, 1.2 is 20 % slower than raw aio-pika. The
throughputs (messages/s) of both are reported too.

While it uses RabbitMQ it holds the machine-wide shared broker lock the test
suites hold (``bench.agent_support.broker_shared``). Everything it declared is
deleted afterwards (its queues are all under ``chiffon-bench-<hex>.``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika

from bench.agent_support import broker_shared, delete_named_queues, failed, median, rounded, row
from bench.common import AMQP_URL, RESULTS_DIR, Timing, observed, where_written, write_results
from chiffon.bus import DEAD_LETTER_QUEUE, Bus, open_bus
from chiffon.bus.amqp import queue_arguments
from chiffon.bus.base import encode
from chiffon.resources.messages import Envelope, RunRequest, make_envelope

FIGURE = "bus publish-with-confirm"
SETUP = "RabbitMQ, batched"
TARGET_RATIO = 1.25
TARGET = f"≤{TARGET_RATIO:.2f}x raw aio-pika"
MESSAGES, QUICK_MESSAGES = 2000, 400
ROUNDS, QUICK_ROUNDS = 6, 4
BATCH = 100  # controllers/outbox.py publishes this many at once
SEQUENTIAL_SHARE, SEQUENTIAL_MIN = 4, 50  # sequential publishing sends a quarter as many
WARMUP = 50
QUEUE = "bench.throughput"
RESULTS_FILE = RESULTS_DIR / "bus-throughput-latest.json"

Publish = Callable[[Sequence[Envelope]], Awaitable[None]]


def envelopes(count: int, tag: str) -> list[Envelope]:
    """``count`` RunRequests as the controller dispatches them; unique ids, one body size."""
    made = []
    for index in range(count):
        run_id = f"bench-{tag}-{index:06d}"
        request = RunRequest(
            run_id=run_id,
            intent=f"bench-{index % 1000:05d}",
            generation=1,
            plan_digest="sha256:" + "0" * 64,
            step="deploy",
            playbook="ansible/playbooks/kuma-deployment.yml",
            inventory="ansible/inventory/hosts.yml",
            limit="localhost",
            agent_id="bench-agent",
            timeout_seconds=3600,
        )
        made.append(make_envelope(request, message_id=run_id))
    return made


class RawPublisher:
    """aio-pika alone: one connection, one confirming channel, one queue declared like Chiffon's."""

    def __init__(self, url: str, queue: str, dead_letter: str) -> None:
        self.url = url
        self.queue = queue
        self.dead_letter = dead_letter
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url, timeout=10)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await self.channel.declare_queue(
            self.queue, durable=True, arguments=queue_arguments(self.queue, self.dead_letter)
        )

    async def publish_one(self, body: bytes, message_id: str) -> None:
        assert self.channel is not None
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            content_type="application/json",
        )
        await self.channel.default_exchange.publish(message, routing_key=self.queue, mandatory=True)

    async def purge(self, name: str) -> None:
        assert self.channel is not None
        queue = await self.channel.get_queue(name, ensure=False)
        await queue.purge()

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def publish_batched(publish: Callable[[int], Awaitable[None]], count: int) -> None:
    for start in range(0, count, BATCH):
        await asyncio.gather(*(publish(index) for index in range(start, min(start + BATCH, count))))


async def publish_sequential(publish: Callable[[int], Awaitable[None]], count: int) -> None:
    for index in range(count):
        await publish(index)


async def timed(work: Awaitable[None]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


async def measure(
    *, quick: bool, messages: int | None = None, rounds: int | None = None
) -> list[dict[str, Any]]:
    """Both modes' rows (batched first); FAILED rows when RabbitMQ cannot be used."""
    try:
        async with broker_shared():
            return await _measure(quick=quick, messages=messages, rounds=rounds)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        return [
            failed(FIGURE, SETUP, TARGET, why),
            failed(FIGURE, "RabbitMQ, sequential", "(information)", why),
        ]


async def _measure(*, quick: bool, messages: int | None, rounds: int | None) -> list[dict[str, Any]]:
    count = messages or (QUICK_MESSAGES if quick else MESSAGES)
    rounds = rounds or (QUICK_ROUNDS if quick else ROUNDS)
    tag = uuid.uuid4().hex[:8]
    prefix = f"chiffon-bench-{tag}."
    raw_queue = f"{prefix}raw.throughput"
    chiffon_queue = prefix + QUEUE
    dead_letter = prefix + DEAD_LETTER_QUEUE
    bus: Bus = open_bus(AMQP_URL, prefix=prefix)
    raw = RawPublisher(AMQP_URL, raw_queue, dead_letter)
    try:
        await bus.connect()
        await bus.declare(QUEUE)
        await raw.connect()
        batch = envelopes(count, tag)
        bodies = [encode(envelope) for envelope in batch]
        sizes = sorted({len(body) for body in bodies})

        async def chiffon_one(index: int) -> None:
            await bus.publish(QUEUE, batch[index])

        async def raw_one(index: int) -> None:
            await raw.publish_one(bodies[index], batch[index].message_id)

        modes = {"batched": publish_batched, "sequential": publish_sequential}
        # One confirm round trip per message (a quorum queue's fsync): fewer, or it would take minutes.
        counts = {"batched": count, "sequential": max(SEQUENTIAL_MIN, count // SEQUENTIAL_SHARE)}
        results: dict[str, dict[str, list[float]]] = {mode: {"chiffon": [], "raw": []} for mode in modes}
        with observed() as seen:
            # Warm-up, not counted: connections, channels and the queues' first segments.
            for name, mode in modes.items():
                await mode(chiffon_one, min(counts[name], WARMUP))
                await mode(raw_one, min(counts[name], WARMUP))
            await _purge(raw, chiffon_queue, raw_queue)
            for round_index in range(rounds):
                for name, mode in modes.items():
                    sides = [("chiffon", chiffon_one), ("raw", raw_one)]
                    for side, one in sides if round_index % 2 == 0 else sides[::-1]:
                        results[name][side].append(await timed(mode(one, counts[name])))
                        await _purge(raw, chiffon_queue, raw_queue)
        rows = [
            _row(name, results[name], counts[name], rounds, sizes, primary=(name == "batched"))
            for name in modes
        ]
        return [seen.annotate(one) for one in rows]
    finally:
        for close in (bus.close, raw.close):
            try:
                await close()
            except Exception as exc:
                print(f"bench: could not close a connection: {exc}", file=sys.stderr)
        await delete_named_queues([chiffon_queue, raw_queue, dead_letter], prefix)


async def _purge(raw: RawPublisher, *queues: str) -> None:
    for queue in queues:
        await raw.purge(queue)


def _row(
    mode: str, seconds: dict[str, list[float]], count: int, rounds: int, sizes: list[int], *, primary: bool
) -> dict[str, Any]:
    ratios = [ours / theirs for ours, theirs in zip(seconds["chiffon"], seconds["raw"], strict=True)]
    ratio = median(ratios)
    chiffon_rate = count / median(seconds["chiffon"])
    raw_rate = count / median(seconds["raw"])
    size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return row(
        FIGURE,
        f"RabbitMQ, {mode}",
        measured=round(ratio, 3),
        summary=(
            f"{ratio:.2f}x raw ({chiffon_rate:,.0f} vs {raw_rate:,.0f} msg/s; "
            f"{count} x {size} B, {rounds} rounds)"
        ),
        target=TARGET if primary else "(information)",
        passed=ratio <= TARGET_RATIO if primary else True,
        details={
            "mode": mode,
            "messages": count,
            "body_bytes": sizes,
            "rounds": rounds,
            "batch": BATCH if mode == "batched" else 1,
            "median_of_round_ratios": round(ratio, 4),
            "round_ratios": rounded(ratios, 4),
            "chiffon_seconds": rounded(seconds["chiffon"], 4),
            "raw_seconds": rounded(seconds["raw"], 4),
            "chiffon_msgs_per_s": round(chiffon_rate, 1),
            "raw_msgs_per_s": round(raw_rate, 1),
            "notes": [
                "time ratio Chiffon / raw aio-pika for the same messages on the same broker; "
                "both persistent, mandatory, confirmed, quorum queues; order alternates by round",
            ],
        },
    )


def main(argv: list[str] | None = None) -> int:
    command = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    command.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MESSAGES} messages x {QUICK_ROUNDS} rounds"
    )
    command.add_argument("--messages", type=int, default=None)
    command.add_argument("--rounds", type=int, default=None)
    command.add_argument("--json", type=Path, default=RESULTS_FILE)
    args = command.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from bench.agent_support import format_row
    from bench.common import LOG_WATCH

    logging.getLogger().addHandler(LOG_WATCH)
    timing = Timing()
    rows = asyncio.run(measure(quick=args.quick, messages=args.messages, rounds=args.rounds))
    for one in rows:
        print(format_row(one))
    document = write_results(args.json, timing, quick=args.quick, rows=rows)
    print(where_written(document, args.json))
    if any(one["measured"] is None for one in rows):
        return 2
    return 0 if all(one["pass"] for one in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
