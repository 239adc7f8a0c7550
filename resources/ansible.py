"""Ansible's playbook vocabulary, as data: which keys of a task are keywords and which the module.

The planner (what a step pulls in), the catalog (what an entry does) and the
suggestions (what a task calls) all read playbooks; they agree on this list.
"""

from __future__ import annotations

#: Everything a task may say besides the module it calls (Ansible's Task, Block and Base attributes).
TASK_KEYWORDS: frozenset[str] = frozenset(
    {
        "action", "always", "any_errors_fatal", "args", "async", "become", "become_exe", "become_flags",
        "become_method", "become_user", "block", "changed_when", "check_mode", "collections",
        "connection", "debugger", "delay", "delegate_facts", "delegate_to", "diff", "environment",
        "failed_when", "ignore_errors", "ignore_unreachable", "listen", "local_action", "loop",
        "loop_control", "module_defaults", "name", "no_log", "notify", "poll", "port", "register",
        "remote_user", "rescue", "retries", "run_once", "tags", "throttle", "timeout", "until", "vars",
        "when",
    }
)  # fmt: skip

#: The sections of a block that hold more tasks.
BLOCK_SECTIONS: tuple[str, ...] = ("block", "rescue", "always")

#: The sections of a play that hold tasks.
PLAY_TASK_SECTIONS: tuple[str, ...] = ("pre_tasks", "tasks", "post_tasks", "handlers")


def is_module_key(key: object) -> bool:
    """Whether a task's key names the module it calls: not a keyword, not a ``with_*`` loop."""
    return isinstance(key, str) and key not in TASK_KEYWORDS and not key.startswith("with_")
