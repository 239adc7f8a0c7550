"""`chiffon controller` as a long-running service: an outage at start means waiting, not a crash loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_controller_waits_for_an_unreachable_database(tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    env.update(
        CHIFFON_HOME=str(tmp_path), CHIFFON_DATABASE_URL="postgresql+asyncpg://postgres:secret@127.0.0.1:1/x"
    )
    process = subprocess.Popen(
        [str(BIN / "chiffon"), "controller"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "retrying in" not in log.read_text():
            time.sleep(0.2)
        assert process.poll() is None, f"the controller exited instead of waiting:\n{log.read_text()}"
        text = log.read_text()
        assert "the database is unavailable" in text and "127.0.0.1:1" in text and "secret" not in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
