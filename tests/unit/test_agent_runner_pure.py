"""The ansible-runner adapter's pure half: extra vars as unsafe YAML, events, stats, job checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from chiffon.agents.runner import (
    HIDDEN,
    InvalidJobError,
    PlaybookJob,
    check_job,
    event_status,
    failure_summary,
    host_stats,
    roles_path,
    to_event,
    trim,
    unsafe_yaml,
)
from chiffon.resources.messages import MAX_EVENT_OUTPUT
from chiffon.resources.run import HostStats

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "examples" / "homelab-infra"


class Unsafe(str):
    """What a loader that knows Ansible's tag makes of ``!unsafe``."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))


def load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


@pytest.mark.parametrize(
    "value",
    [
        {"kuma_port": 3001},
        {"template": "{{ lookup('env','HOME') }}"},
        {"quote": 'say "hi" \\ {% raw %}'},
        {"lines": "one\ntwo\r\nthree\u2028four\u0085five\ttab"},
        {"unicode": "é ü 😀 \u200b \x7f \x00"},
        {"floats": [1.5, 1e20, -2.5e-07, 0.0, 123456789.125]},
        {"ints": [0, -7, 2**70], "bools": [True, False], "none": None},
        {"nested": {"portals": [{"name": "NAS", "url": "http://nas:5000"}], "empty": {}, "list": []}},
        {"yes": "yes", "no": "off", "number_text": "012", "colon": "a: b", "hash": "# x"},
    ],
)
def test_unsafe_yaml_round_trips_plain_data(value: dict[str, Any]) -> None:
    assert load(unsafe_yaml(value)) == value


def test_every_string_value_is_tagged_unsafe() -> None:
    loaded = load(unsafe_yaml({"a": "{{ x }}", "b": ["{{ y }}", {"c": "{{ z }}"}]}))
    assert isinstance(loaded["a"], Unsafe)
    assert isinstance(loaded["b"][0], Unsafe)
    assert isinstance(loaded["b"][1]["c"], Unsafe)


def test_unsafe_yaml_refuses_what_is_not_plain_data() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        unsafe_yaml({"x": math.inf})
    with pytest.raises(ValueError, match="plain data"):
        unsafe_yaml({"x": object()})
    with pytest.raises(ValueError, match="keys must be strings"):
        unsafe_yaml({1: "x"})


def _event(name: str, *, res: dict[str, Any] | None = None, stdout: str = "", **data: Any) -> dict[str, Any]:
    event_data = dict(data)
    if res is not None:
        event_data["res"] = res
    return {
        "event": name,
        "counter": 7,
        "stdout": stdout,
        "created": "2025-05-04T10:00:04.123456+00:00",
        "event_data": event_data,
    }


@pytest.mark.parametrize(
    ("event", "want"),
    [
        (_event("runner_on_ok", res={"changed": True}), "changed"),
        (_event("runner_on_ok", res={"changed": False}), "ok"),
        (_event("runner_item_on_ok", res={"changed": True}), "changed"),
        (_event("runner_on_ok", res={"censored": "hidden"}, stdout="changed: [h]"), "changed"),
        (_event("runner_on_ok", res={"censored": "hidden"}, stdout="ok: [h]"), "ok"),
        (_event("runner_on_failed", res={"msg": "x"}), "failed"),
        (_event("runner_item_on_failed", res={}), "failed"),
        (_event("runner_on_skipped"), "skipped"),
        (_event("runner_on_unreachable", res={}), "unreachable"),
        (_event("playbook_on_task_start"), None),
        (_event("runner_on_start"), None),
        (_event("verbose"), None),
    ],
)
def test_event_status(event: dict[str, Any], want: str | None) -> None:
    assert event_status(event) == want


def test_to_event_maps_the_fields() -> None:
    event = _event(
        "runner_on_ok", res={"changed": True}, stdout="changed: [nas]\r\n", task="Render", host="nas"
    )
    mapped = to_event(event)
    assert mapped is not None
    assert (mapped.seq, mapped.event, mapped.task, mapped.host, mapped.status, mapped.output) == (
        7,
        "runner_on_ok",
        "Render",
        "nas",
        "changed",
        "changed: [nas]",
    )
    assert mapped.created is not None and mapped.created.microsecond == 123456


def test_events_with_nothing_to_show_are_dropped() -> None:
    assert to_event(_event("runner_on_start", task="x", host="h")) is None
    assert to_event(_event("verbose", stdout="\r\n")) is None
    assert to_event(_event("verbose", stdout="[WARNING]: something")) is not None


def test_no_log_output_is_hidden() -> None:
    secret = _event(
        "runner_on_failed",
        res={"censored": "the output has been hidden", "_ansible_no_log": True},
        stdout="fatal: [h]: FAILED! => {password: hunter2}",
        task="Log in",
        host="h",
    )
    mapped = to_event(secret)
    assert mapped is not None and mapped.output == HIDDEN and mapped.status == "failed"
    summary = failure_summary(secret, "")
    assert "hunter2" not in summary and HIDDEN in summary


def test_output_is_trimmed_to_the_protocol_limit() -> None:
    text = "x" * 10_000
    trimmed = trim(text)
    assert len(trimmed) == MAX_EVENT_OUTPUT and trimmed.endswith("characters trimmed)")
    assert trim("short\r\n") == "short"
    mapped = to_event(_event("verbose", stdout=text))
    assert mapped is not None and len(mapped.output) <= MAX_EVENT_OUTPUT


def test_host_stats_turn_categories_into_hosts() -> None:
    data = {
        "ok": {"nas": 5, "unraid": 3},
        "changed": {"nas": 2},
        "failures": {"unraid": 1},
        "dark": {"desk": 1},
        "skipped": {"nas": 1},
        "processed": {"nas": 1, "unraid": 1, "desk": 1, "idle": 1},
        "rescued": {},
        "ignored": {"nas": 1},
    }
    assert host_stats(data) == {
        "desk": HostStats(unreachable=1),
        "idle": HostStats(),
        "nas": HostStats(ok=5, changed=2, skipped=1, ignored=1),
        "unraid": HostStats(ok=3, failed=1),
    }


def test_failure_summary_names_task_host_and_message() -> None:
    failed = _event(
        "runner_on_failed", res={"msg": "Destination  directory\nmissing"}, task="Write", host="nas"
    )
    assert failure_summary(failed, "") == "task 'Write' failed on nas: Destination directory missing"
    unreachable = _event("runner_on_unreachable", res={"msg": "ssh: timeout"}, task="Ping", host="desk")
    assert failure_summary(unreachable, "") == "task 'Ping' could not reach desk: ssh: timeout"
    assert failure_summary(None, "[ERROR]: bad playbook") == "[ERROR]: bad playbook"
    assert len(failure_summary(None, "y" * 2000)) == 500


def _job(tmp_path: Path, **changes: Any) -> PlaybookJob:
    fields: dict[str, Any] = {
        "run_id": "r-1",
        "repo": INFRA,
        "work_dir": tmp_path / "work",
        "playbook": "ansible/playbooks/kuma-deployment.yml",
        "inventory": "ansible/inventory/hosts.yml",
    }
    fields.update(changes)
    return PlaybookJob(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"playbook": "../../etc/passwd"}, "escapes the homelab-infra repository"),
        ({"playbook": "/etc/passwd"}, "must be relative"),
        ({"playbook": "ansible/playbooks/missing.yml"}, "is not a file"),
        ({"playbook": None}, "exactly one of playbook or role"),
        ({"role": "common"}, "exactly one of playbook or role"),
        ({"playbook": None, "role": "../evil"}, "is not a role name"),
        ({"inventory": "ansible/inventory/nope.yml"}, "does not exist"),
    ],
)
def test_check_job_refuses_what_cannot_run(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        check_job(_job(tmp_path, **changes))


def test_check_job_refuses_a_symlink_out_of_the_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "outside.yml").write_text("- hosts: all\n")
    (repo / "link.yml").symlink_to(tmp_path / "outside.yml")
    with pytest.raises(InvalidJobError, match="resolves outside"):
        check_job(_job(tmp_path, repo=repo, playbook="link.yml", inventory=None))


def test_check_job_refuses_a_work_dir_inside_the_repo(tmp_path: Path) -> None:
    with pytest.raises(InvalidJobError, match="work dir"):
        check_job(_job(tmp_path, work_dir=INFRA / "runs"))


def test_check_job_accepts_a_good_job(tmp_path: Path) -> None:
    check_job(_job(tmp_path))
    check_job(_job(tmp_path, playbook=None, role="uptime_kuma"))


def test_roles_path_comes_from_ansible_cfg() -> None:
    assert roles_path(INFRA) == [str((INFRA / "ansible" / "roles").resolve())]
