"""Running a command-line tool with a deadline: its whole process group goes when time is up."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from chiffon.tools import run_tool


async def test_output_and_exit_status(tmp_path: Path) -> None:
    ran = await run_tool(
        Path(sys.executable),
        ["-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
        cwd=tmp_path,
        env=os.environ,
        timeout=30,
    )
    assert (ran.returncode, ran.stdout.strip(), ran.stderr.strip()) == (3, "out", "err")


async def test_a_timeout_kills_the_tool_and_what_it_started(tmp_path: Path) -> None:
    # The tool starts a grandchild that would outlive it, then hangs.
    marker = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_tool(Path(sys.executable), ["-c", script], cwd=tmp_path, env=os.environ, timeout=2)
    assert time.monotonic() - started < 10
    grandchild = int(marker.read_text())
    for _ in range(50):
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the tool's child was left running")


async def test_a_missing_tool_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await run_tool(tmp_path / "no-such-tool", [], cwd=tmp_path, env=os.environ, timeout=5)
