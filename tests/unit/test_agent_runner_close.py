"""The pexpect that ansible-runner is given (agents/runner.py): no sleep closing a finished child."""

from __future__ import annotations

import time

import ansible_runner.runner
import pexpect

from chiffon.agents import runner


def test_ansible_runner_is_given_the_prompt_closing_spawn() -> None:
    assert ansible_runner.runner.pexpect.spawn is runner._PromptCloseSpawn
    assert ansible_runner.runner.pexpect.EOF is pexpect.EOF  # the rest of pexpect as it is


def test_a_finished_child_closes_without_the_sleep() -> None:
    child = runner._PromptCloseSpawn("true")
    child.expect(pexpect.EOF)
    deadline = time.monotonic() + 10
    while child.isalive() and time.monotonic() < deadline:  # ansible-runner's loop waits the same way
        time.sleep(0.01)
    started = time.monotonic()
    child.close()
    assert time.monotonic() - started < 0.05  # ptyprocess would sleep 0.1 s
    assert child.exitstatus == 0


def test_a_child_still_running_is_killed_on_close() -> None:
    child = runner._PromptCloseSpawn("sleep", ["30"])
    child.close(force=True)
    assert not child.isalive() and child.signalstatus is not None
