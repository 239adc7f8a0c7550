"""Run the real ``chiffon up`` process and the real ``chiffonctl`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.stdout)  # type: ignore[no-any-return]


@dataclass
class Chiffon:
    home: Path
    server: str
    process: subprocess.Popen[bytes]
    log: Path

    def ctl(self, *args: str, cwd: Path = ROOT, timeout: float = 60) -> Result:
        env = {**os.environ, "CHIFFON_SERVER": self.server, "CHIFFON_USER": "Erin Tester <erin@example.com>"}
        done = subprocess.run(
            [str(BIN / "chiffonctl"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Erin",
            "GIT_AUTHOR_EMAIL": "erin@example.com",
            "GIT_COMMITTER_NAME": "Erin",
            "GIT_COMMITTER_EMAIL": "erin@example.com",
        }
        done = subprocess.run(
            ["git", *args],
            cwd=self.home / "intents",
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def wait_for(self, predicate, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; server log:\n{self.log.read_text()}"
        )


def start(home: Path, *extra: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = port or free_port()
    log = home.parent / f"chiffon-{port}.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    process = subprocess.Popen(
        [str(BIN / "chiffon"), "up", "--home", str(home), "--port", str(port), *extra],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    return process, log, port


def launch(home: Path, *extra: str) -> Chiffon:
    """``chiffon up`` on a free port, once it answers (``stop`` it when done)."""
    process, log, port = start(home, *extra)
    running = Chiffon(home, f"http://127.0.0.1:{port}", process, log)
    try:
        running.wait_for(
            lambda: process.poll() is not None or running.ctl("version").code == 0,
            "chiffon up to answer",
            timeout=60,
        )
        assert process.poll() is None, f"chiffon up exited early:\n{log.read_text()}"
    except BaseException:
        stop(running)
        raise
    return running


def stop(*running: Chiffon) -> None:
    """SIGTERM each, then wait for all (a clean stop), killing one that takes more than 20 s."""
    for each in running:
        each.process.send_signal(signal.SIGTERM)
    for each in running:
        try:
            each.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            each.process.kill()
            each.process.wait(timeout=10)
            raise


@pytest.fixture
def chiffon(tmp_path: Path) -> Iterator[Chiffon]:
    running = launch(tmp_path / "home")
    try:
        yield running
    finally:
        stop(running)
