"""Running a command-line tool (ansible-playbook, ansible-lint) with a deadline.

The tool gets a process group of its own, so a timeout or a cancellation
kills it with everything it started (Ansible forks workers) instead of leaving
orphans behind; stdin is closed, so a tool that asks a question fails instead
of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolOutput:
    returncode: int
    stdout: str
    stderr: str  # "" when stderr was merged into stdout


async def run_tool(
    executable: Path,
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109
    merge_stderr: bool = False,
    limit: int = 2**16,  # asyncio's default line limit for the pipes
) -> ToolOutput:
    """Run ``executable`` and wait for it, at most ``timeout`` seconds.

    Raises OSError when it cannot start and TimeoutError (after killing its
    whole process group) when it outlives ``timeout``.
    """
    process = await asyncio.create_subprocess_exec(
        str(executable),
        *args,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=limit,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:  # the deadline, or a cancellation: never leave the tool running
        _kill_group(process.pid)
        await process.wait()
        raise
    assert process.returncode is not None
    return ToolOutput(
        process.returncode,
        stdout.decode("utf-8", errors="replace"),
        (stderr or b"").decode("utf-8", errors="replace"),
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
