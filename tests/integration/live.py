"""The API on a real HTTP server (uvicorn, on the test's event loop), and the real ``chiffonctl``.

An in-memory ASGI transport delivers a response only once it is complete, so
a live stream, and the ``chiffonctl`` process that reads it, need a socket.
The server shares the test's event loop and therefore its store; ``chiffonctl``
runs as a subprocess, exactly as a person runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

BIN = Path(sys.executable).parent


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # leave pytest's signal handling alone


@contextlib.asynccontextmanager
async def serve(app: FastAPI, *, port: int = 0, grace: float = 5) -> AsyncIterator[str]:
    """Serve ``app`` on ``port`` (0: a free one); yields its base URL.

    On exit, responses still streaming get ``grace`` seconds, then are cut off.
    """
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=grace
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def ctl_environment(server: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    return {**env, "CHIFFON_SERVER": server, "CHIFFON_USER": "Erin Tester <erin@example.com>"}


async def start_chiffonctl(server: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "chiffonctl"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ctl_environment(server),
    )


async def finish(process: asyncio.subprocess.Process, within: float = 30) -> Result:
    stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


async def chiffonctl(server: str, *args: str, within: float = 30) -> Result:
    """Run ``chiffonctl ARGS`` against ``server`` without blocking the loop that serves it."""
    return await finish(await start_chiffonctl(server, *args), within)
