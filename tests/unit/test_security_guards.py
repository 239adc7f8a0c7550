"""The pure halves of the API's request safety and of the refusal of agents' reports (docs/auth.md).

Cross-site and content-type decisions, the chat's token bucket, the throttle
of refusal audits, "same person" for separation of duties, which agent
reports are refused — tables, no I/O — and ``chiffonctl apply`` refusing YAML
bombs before it calls a server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from chiffon.api.ctl import app as ctl_app
from chiffon.api.guards import RateLimiter, is_json, origin_netloc, retry_after, site_refusal
from chiffon.api.routes.approvals import same_person
from chiffon.controllers.audit_throttle import AuditThrottle
from chiffon.controllers.consumers import Refusal, refusal_audit, screen_reports
from chiffon.resources import Outcome, Run
from chiffon.resources.messages import AnsibleEvent, ErrorPayload, RunAccepted, RunEvent, RunResult
from chiffon.settings import Settings
from tests.helpers import BOMB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


JSON = {"content-type": "application/json", "content-length": "2"}
HOST = {"host": "127.0.0.1:8787"}
FORM = {"content-type": "application/x-www-form-urlencoded", "content-length": "9"}


@pytest.mark.parametrize(
    ("method", "headers", "want"),
    [
        pytest.param("GET", {**HOST, "origin": "https://evil.example"}, None, id="reads-are-never-refused"),
        pytest.param("POST", {**HOST, **JSON}, None, id="cli-json-no-origin"),
        pytest.param("POST", {**HOST}, None, id="no-body-no-type"),
        pytest.param("POST", {**HOST, "content-length": "0"}, None, id="empty-body-no-type"),
        pytest.param(
            "POST", {**HOST, **JSON, "origin": "http://127.0.0.1:8787"}, None, id="own-page-same-origin"
        ),
        pytest.param(
            "POST",
            {"host": "chiffon.lan", **JSON, "origin": "http://chiffon.lan:80"},
            None,
            id="default-port-is-the-same-origin",
        ),
        pytest.param(
            "POST", {**HOST, **JSON, "sec-fetch-site": "same-origin"}, None, id="fetch-metadata-same-origin"
        ),
        pytest.param("POST", {**HOST, **JSON, "sec-fetch-site": "none"}, None, id="fetch-metadata-none"),
        pytest.param(
            "POST",
            {**HOST, "content-type": "application/merge-patch+json", "content-length": "2"},
            None,
            id="json-suffix",
        ),
        pytest.param(
            "POST", {**HOST, **FORM, "origin": "https://evil.example"}, (403, "cross-site"), id="evil-form"
        ),
        pytest.param(
            "POST", {**HOST, **JSON, "origin": "https://evil.example"}, (403, "cross-site"), id="evil-fetch"
        ),
        pytest.param("DELETE", {**HOST, "origin": "null"}, (403, "cross-site"), id="null-origin"),
        pytest.param(
            "POST",
            {**HOST, **JSON, "origin": "http://127.0.0.1:3000"},
            (403, "cross-site"),
            id="other-port-same-host",
        ),
        pytest.param(
            "POST", {**HOST, "sec-fetch-site": "cross-site"}, (403, "cross-site"), id="fetch-metadata-cross"
        ),
        pytest.param(
            "PUT", {**HOST, "sec-fetch-site": "same-site"}, (403, "cross-site"), id="fetch-metadata-same-site"
        ),
        pytest.param("POST", {**HOST, **FORM}, (415, "content-type"), id="form-without-origin"),
        pytest.param(
            "POST",
            {**HOST, "content-type": "text/plain", "content-length": "2"},
            (415, "content-type"),
            id="text-plain-json",
        ),
        pytest.param(
            "POST",
            {**HOST, "content-type": "multipart/form-data; boundary=x", "content-length": "0"},
            (415, "content-type"),
            id="multipart-even-empty",
        ),
        pytest.param("POST", {**HOST, "content-length": "5"}, (415, "content-type"), id="body-without-type"),
        pytest.param(
            "PATCH",
            {**HOST, "transfer-encoding": "chunked"},
            (415, "content-type"),
            id="chunked-without-type",
        ),
    ],
)
def test_site_refusal(method: str, headers: dict[str, str], want: tuple[int, str] | None) -> None:
    refusal = site_refusal(method, headers, scheme="http")
    assert (None if refusal is None else (refusal.status, refusal.reason)) == want


def test_an_allowed_origin_passes_and_others_still_do_not() -> None:
    headers = {**HOST, **JSON, "origin": "https://chiffon.example"}
    assert site_refusal("POST", headers, scheme="http", allowed_origins=["https://chiffon.example"]) is None
    refused = site_refusal("POST", headers, scheme="http", allowed_origins=["https://other.example"])
    assert refused is not None and "allowed_origins" in refused.message


@pytest.mark.parametrize(
    ("origin", "netloc"),
    [
        ("https://chiffon.lan", "chiffon.lan"),
        ("https://chiffon.lan:443", "chiffon.lan"),
        ("HTTP://Chiffon.LAN:8787", "chiffon.lan:8787"),
        ("http://[::1]:8787", "[::1]:8787"),
        ("null", None),
        ("file://", None),
        ("https://chiffon.lan/path", None),
    ],
)
def test_origin_netloc(origin: str, netloc: str | None) -> None:
    assert origin_netloc(origin) == netloc


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("text/json", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
)
def test_is_json(content_type: str, json: bool) -> None:
    assert is_json(content_type) is json


def test_rate_limiter_allows_a_burst_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=3, clock=clock)
    assert [limiter.take("token:ci") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("token:ci")
    assert wait == pytest.approx(10.0) and retry_after(wait) == "10"
    assert limiter.take("token:other") == 0.0  # a bucket per caller
    clock.now += 10
    assert limiter.take("token:ci") == 0.0
    assert limiter.take("token:ci") == pytest.approx(10.0)
    clock.now += 3600
    assert [limiter.take("token:ci") for _ in range(4)][-1] > 0  # refills up to the burst, no further


def test_rate_limit_zero_means_no_limit_and_memory_is_bounded() -> None:
    assert RateLimiter(per_minute=0, burst=1).take("x") == 0.0
    assert not RateLimiter(per_minute=0, burst=1).enabled
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, clock=clock, max_keys=100)
    for index in range(1000):
        limiter.take(f"address:10.0.{index // 256}.{index % 256}")
    assert len(limiter._buckets) <= 100
    assert retry_after(0.01) == "1"


def test_audit_throttle_reports_once_an_interval_with_the_count() -> None:
    clock = Clock()
    throttle = AuditThrottle(60, clock=clock)
    assert throttle.admit(("address:1.2.3.4", "rate-limit")) == 1
    assert [throttle.admit(("address:1.2.3.4", "rate-limit")) for _ in range(5)] == [None] * 5
    assert throttle.admit(("address:1.2.3.4", "cross-site")) == 1  # another reason, its own count
    assert throttle.admit(("address:5.6.7.8", "rate-limit")) == 1  # another caller too
    clock.now += 59.9
    assert throttle.admit(("address:1.2.3.4", "rate-limit")) is None
    clock.now += 0.1
    assert throttle.admit(("address:1.2.3.4", "rate-limit")) == 7  # 6 held back + this one
    assert throttle.admit(("address:1.2.3.4", "rate-limit")) is None


def test_audit_throttle_memory_is_bounded() -> None:
    clock = Clock()
    throttle = AuditThrottle(60, clock=clock, max_keys=50)
    for index in range(500):
        assert throttle.admit(f"key-{index}") == 1
    assert len(throttle._entries) <= 50


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("ci <token:ci>", "ci <token:ci>", True),
        ("CI bot <TOKEN:ci>", "ci <token:ci>", True),
        ("Alice <alice@example.com>", "alice <Alice@Example.com>", True),
        ("Alice <alice@example.com>", "alice <token:alice>", False),
        ("ci <token:ci>", "cd <token:cd>", False),
        ("anonymous <anonymous@chiffon.local>", "Alice <alice@example.com>", False),
    ],
)
def test_same_person_compares_emails(one: str, other: str, same: bool) -> None:
    assert same_person(one, other) is same


def run(run_id: str, agent: str | None) -> Run:
    return Run(
        id=run_id,
        intent="kuma",
        generation=1,
        plan_digest="a" * 64,
        step="deploy",
        step_index=0,
        agent_id=agent,
    )


def test_agents_may_only_report_on_runs_they_were_given() -> None:
    runs = {"r1": run("r1", "infra-1"), "legacy": run("legacy", None)}
    event = AnsibleEvent(seq=1, event="runner_on_ok")
    payloads: list[object] = [
        RunAccepted(run_id="r1", agent_id="infra-1"),
        RunEvent(run_id="r1", agent_id="infra-2", events=[event]),
        RunResult(run_id="r1", agent_id="infra-2", status="successful", duration_seconds=1),
        RunResult(run_id="nope", agent_id="infra-1", status="failed", duration_seconds=1),
        RunResult(run_id="legacy", agent_id="anyone", status="successful", duration_seconds=1),
        ErrorPayload(code="StaleEpoch", message="old"),
        RunResult(run_id="r1", agent_id="infra-1", status="successful", duration_seconds=1),
    ]
    kept, refused = screen_reports(runs, payloads)
    assert kept == [payloads[0], payloads[4], payloads[5], payloads[6]]
    assert refused == [
        Refusal("infra-2", "r1", "RunEvent", "not-its-run", "infra-1"),
        Refusal("infra-2", "r1", "RunResult", "not-its-run", "infra-1"),
        Refusal("infra-1", "nope", "RunResult", "unknown-run"),
    ]
    assert refused[0].describe() == "RunEvent for run r1, which was given to agent infra-1"
    assert refused[2].describe() == "RunResult for run nope, which was never dispatched"


def test_a_refusal_audit_names_agent_run_and_reason() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    event = refusal_audit(
        Refusal("x" * 300, "r1", "RunResult", "not-its-run", "infra-1"), now, 7, ["r1", "r2"]
    )
    assert (event.action, event.outcome, event.actor) == (
        "agent.refused",
        Outcome.FAILURE,
        "agent:" + "x" * 194,
    )
    assert event.details["count"] == 7 and event.details["runs"] == ["r1", "r2"]
    assert event.details["reason"] == "not-its-run" and event.details["owner"] == "infra-1"
    assert len(str(event.details["agent"])) == 200


def test_safety_settings_defaults_and_origin_validation(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.approval_requires_other_person is False
    assert (settings.chat_rate_per_minute, settings.chat_rate_burst) == (30.0, 10)
    assert settings.allowed_origins == []
    assert Settings(home=tmp_path, allowed_origins=["HTTPS://Chiffon.Example/"]).allowed_origins == [
        "https://chiffon.example"
    ]
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(home=tmp_path, allowed_origins=["chiffon.example"])


@pytest.mark.parametrize(
    ("document", "words"),
    [
        pytest.param(BOMB, "alias", id="billion-laughs"),
        pytest.param("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested", id="deep-nesting"),
    ],
)
def test_chiffonctl_apply_refuses_yaml_bombs_before_calling_the_server(
    tmp_path: Path, document: str, words: str
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(document)
    started = time.monotonic()
    # Port 9 (discard) answers nobody: a refusal must come from reading the file, not the network.
    result = CliRunner().invoke(ctl_app, ["--server", "http://127.0.0.1:9", "apply", "-f", str(bomb)])
    assert time.monotonic() - started < 5
    assert result.exit_code == 1, result.output
    assert words in result.output and "bomb.yaml" in result.output
    assert "Traceback" not in result.output and "127.0.0.1:9" not in result.output
