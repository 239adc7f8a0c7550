"""``chiffon`` imports what a command runs, when it runs: an idle desktop agent stays small.

Checked in fresh interpreters, since this test process has imported everything.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from chiffon import cli
from chiffon.agents.infra import DEFAULT_MAX_CONCURRENT
from chiffon.bus import BusError
from chiffon.gitrepo import GitError
from chiffon.store import StoreError

# What a desktop agent has no use for: the API, the database, the controllers, ansible-runner.
HEAVY = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "ansible_runner",
    "chiffon.store",
    "chiffon.api",
    "chiffon.controllers.controller",
    "chiffon.agents.infra",
)


def loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if any(name == h or name.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_loads_no_product_module() -> None:
    modules = loaded_after("import chiffon.cli")
    assert heavy_in(modules) == []
    assert {name for name in modules if name.startswith("chiffon.")} <= {"chiffon.cli", "chiffon.settings"}


def test_the_desktop_agent_command_loads_nothing_heavy() -> None:
    # What `chiffon agent desktop` imports on its way to running the agent on RabbitMQ.
    modules = loaded_after(
        """
        import chiffon.cli
        from chiffon.agents.desktop import DesktopAgent, default_desktop_labels
        from chiffon.bus import open_bus
        from chiffon.controllers.manager import NamedLoop
        open_bus("amqp://guest:guest@127.0.0.1:1/")
        default_desktop_labels()
        """
    )
    assert "chiffon.bus.amqp" in modules and "chiffon.agents.desktop" in modules
    assert heavy_in(modules) == []


@pytest.mark.parametrize("args", [["--help"], ["agent", "desktop", "--help"], ["controller", "--help"]])
def test_help_works_in_a_fresh_process(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from chiffon.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_the_max_concurrent_default_shown_is_the_agents() -> None:
    default = inspect.signature(cli.agent_infra).parameters["max_concurrent"].default
    assert default == cli.MAX_CONCURRENT_DEFAULT == DEFAULT_MAX_CONCURRENT


@pytest.mark.parametrize(
    ("error", "fixable"),
    [
        (cli.StartupError("set CHIFFON_BROKER_URL"), True),
        (StoreError("the database is unreachable"), True),
        (GitError("not a repository"), True),
        (BusError("cannot connect"), True),
        (RuntimeError("a bug"), False),
        (KeyError("x"), False),
    ],
)
def test_errors_a_person_can_fix_are_recognised(error: Exception, fixable: bool) -> None:
    assert cli.is_fixable(error) is fixable
